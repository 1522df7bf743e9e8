"""ONNX Runtime as the CPU inference back end of the segmentation networks.

Why: measured on the 2-core test machine, ONNX Runtime runs this 3D U-Net 2.5-4x faster than PyTorch
(it fuses the instance norms, which PyTorch runs as separate batch-norm calls), with softmax
probabilities within 5e-5 of PyTorch's (`Testing/test_seg_inference.py` holds them to 1e-4).

The network is exported from the model file's weights (TorchScript exporter, opset 17, dynamic batch
and spatial axes) the first time a model is used and kept in a cache folder, named by the model
file's sha256 and the torch / ONNX Runtime versions: no second file to ship, and a changed model or
library never meets a stale export. The cache is `$PROSTATEAI_CACHE` or `~/.cache/prostateai`; when it
cannot be written the export is kept in memory only. The model file's metadata is kept beside it
(`cached_metadata`), so with a warm cache a `segment` process never imports torch (~2 s) or onnx (~1.3 s).
`PROSTATEAI_BACKEND=torch` turns the back end off.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
OPSET = 17


def available() -> bool:
    """Whether ONNX Runtime and the exporter's `onnx` package are importable and not switched off."""
    if os.environ.get("PROSTATEAI_BACKEND", "auto").lower() == "torch":
        return False
    # Found, not imported: `import onnx` alone costs ~1.3 s, and it is only needed to export (once).
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def cache_folder() -> Path:
    return Path(os.environ.get("PROSTATEAI_CACHE") or Path.home() / ".cache" / "prostateai")


class OrtModel:
    """A network run by ONNX Runtime, used where the torch module in eval mode is: `model(x)` maps a
    float32 (N, C, Z, Y, X) tensor to logits, `divisor` is the network's."""

    training = False

    def __init__(self, session, divisor):
        self.session = session
        self.divisor = tuple(divisor)

    def run_numpy(self, batch: np.ndarray) -> np.ndarray:
        """float32 logits for a float32 (N, C, Z, Y, X) array (what `inference.sliding_window` calls)."""
        return self.session.run(None, {"image": np.ascontiguousarray(batch, np.float32)})[0]

    def __call__(self, batch):
        """The same for a torch tensor (as a torch module is called, e.g. by MONAI in the bench)."""
        import torch

        return torch.from_numpy(self.run_numpy(batch.detach().cpu().numpy()))

    def eval(self):
        return self


def export_bytes(model, in_channels: int) -> bytes:
    """The torch network as ONNX (dynamic batch and spatial axes)."""
    import torch

    axes = {0: "batch", 2: "z", 3: "y", 4: "x"}
    example = torch.zeros((2, in_channels) + tuple(4 * d for d in model.divisor))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # instance norm "train=True" export notes: no running stats here
        torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes})
    return buffer.getvalue()


def _cache_path(key: str) -> Path:
    from importlib.metadata import version

    # named by the versions without importing torch (the exporter's version shapes the file)
    return cache_folder() / f"{key[:32]}-torch{version('torch').split('+')[0]}-ort{version('onnxruntime')}.onnx"


def _cached_export(build, in_channels: int, key: str, fresh: bool = False) -> bytes:
    path = _cache_path(key)
    if path.is_file() and not fresh:
        return path.read_bytes()
    data = export_bytes(build(), in_channels)
    _write_cache(path, data, "ONNX export")  # a read-only home: kept for this process only
    return data


def _write_cache(path: Path, data: bytes, what: str) -> None:
    """Write a cache file atomically; a cache that cannot be written is only logged (it is an optimisation)."""
    from ProstateAICore.imageio import atomic_path

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
    except OSError as exc:
        log.info("%s not cached (%s)", what, exc)


def _metadata_path(key: str) -> Path:
    return cache_folder() / f"{key[:32]}-metadata.json"


def cached_metadata(key: str) -> dict | None:
    """The model file's metadata kept beside its export (None when not cached or unreadable)."""
    import json

    try:
        value = json.loads(_metadata_path(key).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and value.get("net") else None


def store_metadata(key: str, metadata: dict) -> None:
    import json

    try:
        data = json.dumps(metadata).encode()
    except (TypeError, ValueError) as exc:  # not JSON: the model file is read each time instead
        log.info("model metadata not cached (%s)", exc)
        return
    _write_cache(_metadata_path(key), data, "model metadata")


def session(data: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads do not spin: the CPU is often shared (the GUI, a training run), and it measured faster.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def divisor_of(net_config: dict) -> tuple[int, int, int]:
    """Per-axis factor a network's input size must be a multiple of (as `UNet3D.divisor`), from its
    recorded config (`NetConfig.to_dict`, which lists every level's strides): no torch needed."""
    strides = net_config["strides"]
    return tuple(int(np.prod([level[axis] for level in strides])) for axis in range(3))


def wrap(build, metadata: dict, key: str, threads: int | None = None) -> OrtModel:
    """The network `build()` makes (a torch UNet3D; called only when the export is not cached) as an
    OrtModel; `key` names its export in the cache (the model file's sha256). A damaged cache file is
    exported again."""
    import sys

    in_channels = int(metadata["net"].get("in_channels", 1))
    if not threads:
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else 2
    divisor = divisor_of(metadata["net"])
    try:
        return OrtModel(session(_cached_export(build, in_channels, key), threads), divisor)
    except Exception:  # noqa: BLE001 - truncated or foreign cache file: export afresh (and replace it), once
        return OrtModel(session(_cached_export(build, in_channels, key, fresh=True), threads), divisor)
