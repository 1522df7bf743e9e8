"""The model catalog (`Resources/Models.json`) and safe loading of model files.

A model file (`*.pt`) is `{"metadata": {...}, "state_dict": {name: tensor}}`: plain containers and
tensors only, so it is read with `torch.load(..., weights_only=True)` (no pickled code runs).
Catalog models are checked against the sha256 recorded in the catalog before loading: a truncated
or altered file gives a clear error instead of silently wrong masks.

Where the catalog is: `$PROSTATEAI_MODELS` (a Models.json path) if set, else `Resources/Models.json`
two folders above this package, which is the repository root in a checkout and
`lib/Slicer-X.Y/` in an installed Slicer extension (see ProstateAI/CMakeLists.txt).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from pathlib import Path

from ProstateAICore.errors import InputError
from ProstateAICore.imageio import read_json

MODEL_FORMAT = "prostateai-seg-model"


def pick_device(name: str = "auto"):
    """torch device: "auto" = cuda when available, else cpu; a clear error for unavailable cuda.

    On a Linux machine without an NVIDIA device node, "auto" is "cpu" without importing torch (about 2 s
    of a new process's start; the ONNX Runtime path needs no torch at all)."""
    if name == "auto" and "torch" not in sys.modules and _no_nvidia_device():
        return "cpu"
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu.")
    return torch.device(name)


def _no_nvidia_device() -> bool:
    return sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*")


def catalog_path() -> Path:
    if os.environ.get("PROSTATEAI_MODELS"):
        return Path(os.environ["PROSTATEAI_MODELS"])
    return Path(__file__).resolve().parents[2] / "Resources" / "Models.json"


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """Catalog entries by name (each with an absolute `path` to its weights added)."""
    path = Path(path) if path else catalog_path()
    if not path.is_file():
        raise InputError(f"Model catalog '{path}' not found (set PROSTATEAI_MODELS to a Models.json).")
    try:
        entries = read_json(path, "Model catalog")["models"]
    except (KeyError, TypeError) as exc:
        raise InputError(f"Model catalog '{path}' is not readable: {exc}") from exc
    return {e["name"]: {**e, "path": str((path.parent / e["file"]).resolve())} for e in entries}


def default_model(task: str, catalog: dict[str, dict] | None = None) -> str:
    """Name of the catalog's first model for `task` ("gland" or "zones")."""
    catalog = load_catalog() if catalog is None else catalog
    for name, entry in catalog.items():
        if entry.get("task") == task:
            return name
    raise InputError(f"The model catalog has no '{task}' model.")


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(name_or_path: str, catalog: dict[str, dict] | None = None) -> tuple[Path, str | None, dict | None]:
    """(weights path, expected sha256 or None, catalog entry or None) for a catalog name or a file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".pt" and candidate.is_file():
        return candidate, None, None
    catalog = load_catalog() if catalog is None else catalog
    if name_or_path not in catalog:
        raise InputError(f"Unknown model '{name_or_path}': not a .pt file and not in the catalog "
                         f"(available: {', '.join(catalog) or 'none'}).")
    entry = catalog[name_or_path]
    return Path(entry["path"]), entry.get("sha256"), entry


def read_model_file(path: str | os.PathLike, device="cpu", expected_sha256: str | None = None):
    """(model in eval mode on `device`, metadata) from a model file; checks the sha256 if given."""
    blob = read_model_blob(path, expected_sha256)
    return build_model(blob, path).to(device).eval(), blob["metadata"]


def read_model_blob(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """{"metadata", "state_dict"} of a model file, read with weights_only=True (sha256 checked if given)."""
    import torch

    path = _existing(path)
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise InputError(f"Model file '{path}' is corrupted or was changed: its sha256 is {actual[:16]}..., "
                             f"the catalog expects {expected_sha256[:16]}.... Reinstall the extension or "
                             "restore the file.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad input file
        raise InputError(f"Could not read model file '{path}': {exc}") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("metadata"), dict) \
            or blob["metadata"].get("format") != MODEL_FORMAT:
        raise InputError(f"'{path}' is not a ProstateAI segmentation model.")
    return blob


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Model file '{path}' does not exist.")
    return path


def build_model(blob: dict, path="model"):
    """The torch network of a model file's contents (eval mode, CPU)."""
    from . import network

    try:
        model = network.build_network(blob["metadata"]["net"])
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"Model file '{path}' does not match its network description: {exc}") from exc
    return model.eval()


def load(name_or_path: str, device="cpu", catalog: dict[str, dict] | None = None, backend: str = "auto",
         threads: int | None = None):
    """(model, metadata) for a catalog name (sha256-checked) or a model file path.

    `backend`: "auto" runs the network with ONNX Runtime on the CPU when it is installed (`onnx_backend`:
    2.5-4x faster here, same probabilities to 1e-4), else with torch; "torch" always with torch.
    metadata["backend"] says which. `threads`: ONNX Runtime's threads (default: torch's setting, else 2).
    With the export cached, nothing here imports torch."""
    from . import onnx_backend

    if backend not in ("auto", "torch", "onnxruntime"):
        raise InputError(f"Unknown inference back end '{backend}' (auto, torch or onnxruntime).")
    path, sha, entry = resolve(name_or_path, catalog)
    if backend == "onnxruntime" and not onnx_backend.available():
        raise InputError("The onnxruntime back end needs the onnxruntime and onnx packages (pip install them).")
    if not runs_on_torch(device, backend):
        key = sha256_of(_existing(path))  # names the export; the file is checked against the catalog as always
        if sha is not None and key != sha:
            read_model_blob(path, expected_sha256=sha)  # raises the corrupted-file error
        blob = None
        metadata = onnx_backend.cached_metadata(key)
        if metadata is None:  # first use: read the file (torch), keep its metadata beside the export
            blob = read_model_blob(path)
            metadata = blob["metadata"]
            onnx_backend.store_metadata(key, metadata)
        metadata = _named(dict(metadata), path, entry)
        metadata["backend"] = "onnxruntime"
        # the torch network is only built when the export is not cached yet
        build = lambda: build_model(blob or read_model_blob(path), path)  # noqa: E731
        return onnx_backend.wrap(build, metadata, key, threads), metadata
    blob = read_model_blob(path, expected_sha256=sha)
    metadata = _named(dict(blob["metadata"]), path, entry)
    metadata["backend"] = "torch"
    return build_model(blob, path).to(device), metadata


def runs_on_torch(device, backend: str = "auto") -> bool:
    """Whether `load` runs the networks with torch: asked for, on a GPU, or without ONNX Runtime."""
    from . import onnx_backend

    on_cpu = getattr(device, "type", str(device)) == "cpu"
    return backend == "torch" or not on_cpu or not onnx_backend.available()


def _named(metadata: dict, path: Path, entry: dict | None) -> dict:
    metadata["name"] = entry["name"] if entry else path.stem
    metadata["catalog_version"] = entry.get("version") if entry else None
    return metadata


def portable_path(value: str | None, base: Path) -> str | None:
    """A path as the catalog may store it: an absolute one becomes relative to `base` (the repository),
    so no committed file names a machine's folders."""
    if not value or not os.path.isabs(str(value)):
        return value
    return Path(os.path.relpath(value, base)).as_posix()


def catalog_entry(name: str, version: str, task: str, weights: Path, metadata: dict, catalog_dir: Path,
                  card: str | None = None) -> dict:
    """A catalog entry describing `weights` (which must already be in its final place)."""
    training = metadata.get("training", {})
    validation = metadata.get("validation", {})
    deployment = validation.get("deployment", {})
    return {
        "name": name,
        "version": version,
        "task": task,
        "description": metadata.get("task"),
        "file": weights.relative_to(catalog_dir).as_posix(),
        "sha256": sha256_of(weights),
        "size_bytes": weights.stat().st_size,
        "input_sequences": metadata.get("channels"),
        "labels": metadata.get("labels"),
        "working_spacing_mm": metadata.get("preprocess", {}).get("spacing_xyz_mm"),
        "normalization": metadata.get("preprocess", {}).get("normalization"),
        "parameters": metadata.get("parameters"),
        "training_command": training.get("command"),
        "data": portable_path(training.get("data"), catalog_dir.parent),
        "split": metadata.get("split"),
        "validation": {
            "mean_dice": deployment.get("mean_dice", validation.get("mean_dice")),
            "per_case_dice": deployment.get("per_case", validation.get("per_case")),
            "threshold": metadata.get("inference", {}).get("threshold", 0.5),
            "epoch": validation.get("epoch"),
            "how": (f"whole volume on the original grid, {metadata.get('inference', {}).get('layout', 'patch')} windows, "
                    f"overlap {metadata.get('inference', {}).get('overlap', 0.5)}, flip TTA, tuned threshold, "
                    "largest component") if deployment else "validation during training",
        },
        **({"card": card} if card else {}),
    }


def publish(run_model: str | os.PathLike, name: str, version: str, task: str, catalog: str | os.PathLike | None = None,
            card: str | None = None, extra: dict | None = None) -> dict:
    """Copy a run's model.pt into Resources/Models/<name>.pt and add/replace its catalog entry."""
    import shutil

    from ProstateAICore.imageio import atomic_path, write_text

    catalog = Path(catalog) if catalog else catalog_path()
    _, metadata = read_model_file(run_model)
    target = catalog.parent / "Models" / f"{name}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:  # the shipped weights are never half-written
        shutil.copyfile(run_model, tmp)
    entry = {**catalog_entry(name, version, task, target, metadata, catalog.parent, card), **(extra or {})}
    entries = json.loads(catalog.read_text())["models"] if catalog.is_file() else []
    entries = [e for e in entries if e["name"] != name] + [entry]
    entries.sort(key=lambda e: ({"gland": 0, "zones": 1, "localise": 2}.get(e["task"], 3), e["name"]))
    write_text(json.dumps({"format": "prostateai-model-catalog", "version": 1, "models": entries}, indent=2) + "\n",
               catalog)
    return entry
