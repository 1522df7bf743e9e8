"""Training loop for the segmentation network (`prostateai train`).

One run folder holds everything: `last.pt` (full state for `--resume`: model, optimizer, epoch,
history, RNG states; tensors and plain values only, read with weights_only=True), `model.pt` (best-validation weights stored as float16 + metadata, the file
inference loads), `model.json` (the same metadata, readable), `history.csv` and
`learning_curve.png`, `split.json`.

Design choices (why):
- All cases are preprocessed once and kept in memory (36 small volumes): epochs cost only the
  network, not I/O or resampling.
- Loss = cross-entropy + soft Dice (batch Dice over foreground classes), deep supervision on
  the two coarser decoder levels with weights 1, 1/2, 1/4.
- AdamW with linear warm-up and polynomial decay: converges in a few thousand CPU iterations.
- Checkpoint selection on validation Dice computed like deployment: whole-volume sliding window
  on the working grid, probabilities resampled back to the ORIGINAL grid, largest connected
  component, Dice against the original mask (the raw argmax Dice is logged too).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import dataset as ds
from . import inference, metrics, network, preprocess
from ProstateAICore.errors import InputError
from ProstateAICore.imageio import atomic_path, write_text
from .models import MODEL_FORMAT, pick_device  # noqa: F401  (defined once, in the light models module)
from ProstateAICore.progress import ProgressFn


@dataclass
class TrainConfig:
    data: str
    out: str
    epochs: int = 40
    iterations: int = 150  # per epoch
    batch: int = 2
    patch: tuple[int, int, int] = (16, 80, 80)  # (z, y, x) voxels on the working grid
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup: int = 50  # iterations
    val_fraction: float = 0.2
    val_every: int = 2
    val_overlap: float = 0.25
    val_tta: bool = True  # validate as deployed (flip TTA) so the best checkpoint is the best deployed model
    p_foreground: float = 0.5
    spacing: tuple[float, float, float] = preprocess.WORKING_SPACING
    seed: int = 0
    threads: int = 1
    device: str = "auto"
    labels: tuple[str, ...] = ("background", "prostate")
    channels: tuple[str, ...] = ("T2",)  # input names; '*_mask' channels are masks (not normalised)
    label_map: dict = field(default_factory=dict)  # {old value: new value} applied to the reference masks
    task: str = "prostate whole-gland segmentation from axial T2"
    net: dict = field(default_factory=dict)  # NetConfig overrides
    augment: dict = field(default_factory=dict)  # AugmentConfig overrides
    max_cases: int | None = None  # debugging / tests: use only the first N cases
    init: str | None = None  # start from this model file's weights (fine-tuning / warm restart), new schedule
    ema: float = 0.0  # > 0: validate and save an exponential moving average of the weights with this decay
    command: str = ""


VALIDATION_FLIPS = ((2,),)  # flip TTA used for validation and stored as the deployment default


# ---------------------------------------------------------------- presets

# ISUP grade group classes of the csPCa lesion model (PI-CAI: ISUP >= 2 is clinically significant;
# Pellicer-Valero 2022 grade the lesions too): ISUP 0-1 (benign / insignificant) are background.
LESION_LABELS = ("background", "ISUP2", "ISUP3", "ISUP>=4")
LESION_LABEL_MAP = {0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 5: 3}
PRESETS = ("lesions", "localiser")

# The coarse gland localiser (inference.localised_probabilities): a small network on a 4 mm grid that
# sees a whole pelvis (256 mm) in one 16 x 64 x 64 window; it only has to find the gland's box.
LOCALISER_SPACING = (4.0, 4.0, 4.0)
LOCALISER_NET = {"features": [8, 16, 32, 48], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                 "kernels": [[3, 3, 3]] * 4, "blocks": [1, 1, 1, 1]}
LOCALISER_PATCH = (16, 64, 64)


def preset_settings(name: str, data: str) -> dict:
    """TrainConfig fields of a preset.

    "lesions": the PI-CAI / nnU-Net layout (`dataset.write_picai_layout`), channels T2, ADC, HBV
    (+ PZ_mask, TZ_mask when the cases have 5 files), ISUP labels remapped to background / ISUP2 /
    ISUP3 / ISUP>=4. The channel count is read from the dataset's first case.
    "localiser": gland data (T2 -> prostate) on the 4 mm grid with the small localiser network.
    """
    if name not in PRESETS:
        raise InputError(f"Unknown preset '{name}' (known: {', '.join(PRESETS)}).")
    if name == "localiser":
        return {"spacing": LOCALISER_SPACING, "net": dict(LOCALISER_NET), "patch": LOCALISER_PATCH,
                "task": "prostate localisation on a coarse 4 mm grid (the gland's box for the fine pass)"}
    n_images = len(ds.discover_cases(data)[0].images)
    if n_images not in (3, 5):
        raise InputError(f"--preset lesions needs 3 (T2, ADC, HBV) or 5 (+ PZ and TZ masks) images per case; "
                         f"'{data}' has {n_images}.")
    channels = ds.LESION_CHANNELS[:n_images]
    return {"channels": channels, "labels": LESION_LABELS, "label_map": dict(LESION_LABEL_MAP),
            "task": f"csPCa lesion segmentation (ISUP classes) from {' + '.join(channels)}"}


# ---------------------------------------------------------------- loss

def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice) over the foreground classes, Dice pooled over the batch."""
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3)[:, 1:].float()
    dims = (0, 2, 3, 4)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    soft_dice = (2 * intersection + smooth) / (denominator + smooth)
    return ce + (1 - soft_dice.mean())


def deep_supervision_loss(outputs, target: torch.Tensor) -> torch.Tensor:
    if not isinstance(outputs, (list, tuple)):
        return dice_ce_loss(outputs, target)
    weights = [0.5 ** i for i in range(len(outputs))]
    total = sum(w * dice_ce_loss(o, network.downsample_target(target, o.shape[-3:])) for w, o in zip(weights, outputs))
    return total / sum(weights)


def learning_rate(cfg: TrainConfig, iteration: int, total: int) -> float:
    if iteration < cfg.warmup:
        return cfg.lr * (iteration + 1) / cfg.warmup
    return cfg.lr * (1 - iteration / max(total, 1)) ** 0.9


# ---------------------------------------------------------------- helpers

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------- resume state (last.pt)

CHECKPOINT_TYPES = {"config": dict, "model": dict, "optimizer": dict, "epoch": int, "history": list, "best": dict,
                    "sampler_rng": dict, "torch_rng": torch.Tensor}


def _plain(value):
    """`value` as only what `torch.load(..., weights_only=True)` reads back: tensors, numbers, strings,
    bools, None, lists, tuples and dicts. Why: the resume state is then loaded without unpickling code."""
    if isinstance(value, torch.Tensor) or value is None:
        return value
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass but pickles as numpy
        return value.item()
    for kind in (bool, int, float, str):  # subclasses (enums, numpy-backed) become the plain type
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    raise TypeError(f"A {type(value).__name__} cannot be stored in a training checkpoint.")


def _short(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The resume state in `path`, read with weights_only=True: a file holding pickled code (or anything
    but tensors and plain values) is refused before any of it runs."""
    def refused(reason: str) -> InputError:
        return InputError(f"'{path}' is not a ProstateAI training checkpoint ({reason}).")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols: the error line says enough
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises turning the weights-only guard off: never repeat that to the user.
        raise refused("it holds objects other than tensors and plain values; nothing in it was run") from exc
    except Exception as exc:  # not a torch file at all: truncated zip, random bytes, a folder...
        raise refused(f"unreadable: {_short(exc)}") from exc
    if not isinstance(state, dict):
        raise refused(f"a {type(state).__name__}, not a dict")
    wrong = [key for key, kind in CHECKPOINT_TYPES.items() if not isinstance(state.get(key), kind)]
    if wrong:
        raise refused(f"missing or wrong: {', '.join(wrong)}")
    unknown = set(state["config"]) - {f.name for f in fields(TrainConfig)}
    if unknown or not {"data", "epochs", "patch", "spacing", "labels"} <= set(state["config"]):
        raise refused(f"unexpected training settings {sorted(map(str, unknown))}" if unknown else "incomplete settings")
    return state


def model_metadata(cfg: TrainConfig, net_cfg: network.NetConfig, n_channels: int, extra: dict) -> dict:
    return {
        "format": MODEL_FORMAT,
        "version": 1,
        "task": cfg.task,
        "labels": {str(i): name for i, name in enumerate(cfg.labels)},
        "channels": list(cfg.channels)[:n_channels] + [f"channel{i}" for i in range(len(cfg.channels), n_channels)],
        "net": net_cfg.to_dict(),
        "preprocess": preprocess.metadata(cfg.spacing, channels=cfg.channels),
        "inference": {"patch_zyx": list(cfg.patch), "overlap": 0.5, "gaussian_sigma_scale": 0.125,
                      "tta_flip_axes_zyx": [list(a) for a in VALIDATION_FLIPS], "postprocess": "largest connected component"},
        "training": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        **extra,
    }


def save_model(model: torch.nn.Module, metadata: dict, path: Path) -> None:
    """Best weights as float16 (halves the file: ~2.3 M parameters -> ~4.6 MB) + metadata."""
    state = {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}
    _save_atomic({"metadata": metadata, "state_dict": state}, path)
    write_text(json.dumps(metadata, indent=2), path.with_suffix(".json"))


def load_model(path: str | os.PathLike, device="cpu") -> tuple[torch.nn.Module, dict]:
    """Model + metadata from a `model.pt` (see `models.read_model_file`)."""
    from . import models

    return models.read_model_file(path, device=device)


def weight_average(model: torch.nn.Module, decay: float):
    """Exponential moving average of `model`'s weights (None when decay is 0).

    Why: with batch 2 and seven validation cases, Dice swings by ~0.02 between checkpoints; the
    averaged weights change slowly, so the checkpoint that is validated and kept is less of a lottery.
    The network uses instance norm (no running statistics), so the average needs no recalibration.
    """
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise InputError(f"--ema must be between 0 and 1 (e.g. 0.998), got {decay}.")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _initialise_from(model: torch.nn.Module, source: torch.nn.Module, path: str, log) -> None:
    """Copy the weights of `source` (read from the model file `path`, same network) into `model`."""
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise InputError(f"--init model '{path}' has a different network than this run: {exc}") from exc
    log(f"weights initialised from {path}")


# ---------------------------------------------------------------- validation

def validate(model, cases: list[ds.PreparedCase], patch, overlap: float, device, flip_axes=()) -> dict:
    """Whole-volume Dice per case on the ORIGINAL grid (mean over foreground labels).

    Returns {case: {"raw": argmax Dice, "lcc": Dice after keeping each label's largest connected
    component}}; "lcc" is what deployment produces, so checkpoints are selected on it.
    """
    model.eval()
    per_case = {}
    for case in cases:
        probs = inference.sliding_window(model, case.image, patch, overlap=overlap, flip_axes=flip_axes,
                                         device=device)
        probs = preprocess.probabilities_to_original(probs, case.working, case.original)
        pred = probs.argmax(0)
        truth = ds.sitk.GetArrayViewFromImage(case.original)
        labels = range(1, probs.shape[0])
        raw = [metrics.dice(pred == k, truth == k) for k in labels]
        lcc = [metrics.dice(inference.keep_largest_component(pred == k), truth == k) for k in labels]
        per_case[case.name] = {"raw": float(np.mean(raw)), "lcc": float(np.mean(lcc))}
    model.train()
    return per_case


THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
LAYOUTS = ("patch", "whole-plane")
OVERLAPS = (0.5, 0.25)  # fewer windows are faster; the model is sensitive to window placement, so validate


def tune_threshold(model, metadata: dict, cases: list[ds.PreparedCase], device, thresholds=THRESHOLDS,
                   layouts=LAYOUTS, overlaps=OVERLAPS) -> dict:
    """Window layout (`inference.window_patch`), window overlap and foreground-probability threshold
    (binary models) that maximise the mean validation Dice after largest-component post-processing,
    with the deployment path (flip TTA, original grid). Ties go to the faster setting.

    Returns {"layout", "overlap", "threshold", "mean_dice", "per_case" (at that choice),
    "table" {"layout@overlap": {t: Dice}}}.
    """
    settings = dict(metadata.get("inference", {}))
    flips = tuple(tuple(a) for a in settings.get("tta_flip_axes_zyx", [[2]]))
    settings_grid = [(layout, overlap) for layout in layouts for overlap in overlaps]
    scores = {(layout, overlap, t): {} for layout, overlap in settings_grid for t in thresholds}
    model.eval()
    for case in cases:
        truth = ds.sitk.GetArrayViewFromImage(case.original) == 1
        for layout, overlap in settings_grid:
            patch = inference.window_patch({**settings, "layout": layout}, case.image.shape[1:], model.divisor)
            probs = inference.sliding_window(model, case.image, patch, overlap=overlap, flip_axes=flips, device=device)
            foreground = preprocess.probabilities_to_original(probs, case.working, case.original)[1]
            for t in thresholds:
                scores[layout, overlap, t][case.name] = metrics.dice(inference.foreground_mask(foreground, t), truth)
    table = {key: float(np.mean(list(v.values()))) for key, v in scores.items()}
    best = max(table, key=lambda k: (round(table[k], 4), k[0] == "whole-plane", -k[1], -abs(k[2] - 0.5)))
    return {"layout": best[0], "overlap": best[1], "threshold": best[2], "mean_dice": table[best],
            "per_case": scores[best],
            "table": {f"{layout}@{overlap}": {f"{t:.2f}": round(table[layout, overlap, t], 5) for t in thresholds}
                      for layout, overlap in settings_grid}}


def finalize_run(out: str | os.PathLike, data: str | None = None, threads: int = 2, log=print) -> dict:
    """Tune the threshold of a run's best model on its validation cases and store it in model.pt.

    The validation Dice stored afterwards is the deployment one (tuned window layout, overlap and
    threshold; flip TTA; largest component; on the original grid).
    """
    out = Path(out)
    torch.set_num_threads(max(1, threads))
    model, metadata = load_model(out / "model.pt")
    training = metadata["training"]
    cases = {c.name: c for c in ds.discover_cases(data or training["data"])}
    val_names = [v["name"] for v in metadata.get("split", {}).get("val", [])]
    if not val_names:
        log("no validation cases: threshold left at 0.5")
        return {"threshold": 0.5}
    prepared = [ds.prepare_case(cases[n], tuple(training["spacing"]), channel_names=training.get("channels", ("T2",)),
                                label_map=training.get("label_map") or None) for n in val_names]
    result = tune_threshold(model, metadata, prepared, pick_device("cpu"))
    metadata["inference"]["threshold"] = result["threshold"]
    metadata["inference"]["layout"] = result["layout"]
    metadata["inference"]["overlap"] = result["overlap"]
    metadata.setdefault("validation", {})["deployment"] = result
    save_model(model, metadata, out / "model.pt")
    log(f"layout {result['layout']}, overlap {result['overlap']}, threshold {result['threshold']:.2f}: mean validation Dice {result['mean_dice']:.4f} "
        f"(table {result['table']})")
    return result


# ---------------------------------------------------------------- learning curve

def write_history(history: list[dict], out: Path) -> None:
    if not history:
        return
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in history for key in row))  # runs resumed across versions
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(history)
    write_text(buffer.getvalue(), out / "history.csv")
    plot_history(history, out / "learning_curve.png")


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "b-", label="train loss (Dice+CE)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="b")
    ax2 = ax1.twinx()
    val = [(h["epoch"], h["val_dice"]) for h in history if h["val_dice"] != ""]
    raw = [(h["epoch"], h["val_dice_raw"]) for h in history if h.get("val_dice_raw", "") != ""]
    if val:
        ax2.plot(*zip(*val), "r.-", label="validation Dice (largest component)")
    if raw:
        ax2.plot(*zip(*raw), "r:", alpha=0.6, label="validation Dice (raw argmax)")
    ax2.set_ylabel("validation Dice", color="r")
    ax2.set_ylim(0, 1)
    fig.suptitle("ProstateAI segmentation training")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------- main loop

def split_of_model(metadata: dict, path: str, cases: list[ds.Case], log) -> tuple[list[ds.Case], list[ds.Case]]:
    """The (train, val) cases of the model read from `path` (its `metadata`), by name, from this dataset."""
    split = metadata.get("split") or {}
    by_name = {c.name: c for c in cases}
    val_names = [v["name"] for v in split.get("val", [])]
    recorded = val_names + [t["name"] for t in split.get("train", [])]
    missing = [n for n in val_names if n not in by_name]
    if not any(n in by_name for n in recorded):  # e.g. a model trained on another dataset altogether
        missing = missing or recorded
    if not split or missing:
        raise InputError(f"Model '{path}' was not trained and validated on this dataset "
                         f"({'no split recorded' if not split else 'missing cases: ' + ', '.join(missing)}); "
                         "use it with the data it was trained on (or train from scratch).")
    val = [by_name[n] for n in val_names]
    val_set = set(val_names)
    train = [c for c in cases if c.name not in val_set]
    log(f"validation split taken from {path}: {', '.join(val_names)}")
    return train, val


def _split_entry(case: ds.Case) -> dict:
    """How a case is recorded in the model's split (with the voxel size a dataset list imposed)."""
    return {"name": case.name, "group": case.group, **({"spacing": list(case.spacing)} if case.spacing else {})}


def _prepare(cfg: TrainConfig, log, init_metadata: dict | None = None
             ) -> tuple[list[ds.PreparedCase], list[ds.PreparedCase], dict]:
    cases = ds.discover_cases(cfg.data)
    if cfg.max_cases:
        cases = cases[: cfg.max_cases]
    n_images = len(cases[0].images)
    if len(cfg.channels) != n_images:
        raise InputError(f"The dataset has {n_images} image channel(s) per case but --channels names "
                         f"{len(cfg.channels)} ({', '.join(cfg.channels)}).")
    ds.assign_groups(cases)
    if init_metadata is not None:
        # Fine-tuning keeps the source model's split: its training cases must not become validation.
        train_cases, val_cases = split_of_model(init_metadata, cfg.init, cases, log)
    else:
        train_cases, val_cases = ds.stratified_split(cases, cfg.val_fraction, cfg.seed)
    if not train_cases:
        raise InputError("No training cases left after the validation split.")
    t0 = time.time()
    prepare = lambda c: ds.prepare_case(c, cfg.spacing, seed=cfg.seed, channel_names=cfg.channels,  # noqa: E731
                                        label_map=cfg.label_map)
    prepared_train = [prepare(c) for c in train_cases]
    prepared_val = [prepare(c) for c in val_cases]
    split = {"train": [_split_entry(c) for c in train_cases], "val": [_split_entry(c) for c in val_cases]}
    log(f"{len(train_cases)} training / {len(val_cases)} validation cases preprocessed in {time.time() - t0:.0f} s "
        f"(groups: {sorted({c.group for c in cases})})")
    return prepared_train, prepared_val, split


def run_training(cfg: TrainConfig, resume: bool = False, progress: ProgressFn | None = None, log=print) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, cfg.threads))
    ds.sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, cfg.threads))
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    checkpoint = None
    if resume:
        if not (out / "last.pt").is_file():
            raise InputError(f"Nothing to resume: '{out / 'last.pt'}' does not exist.")
        checkpoint = load_checkpoint(out / "last.pt")
        saved = checkpoint["config"]
        # The run's recipe comes from the checkpoint; only the epoch count may be extended. The run
        # folder is where last.pt was found (the folder may have been moved since).
        try:
            cfg = TrainConfig(**{**saved, "out": str(out), "epochs": max(cfg.epochs, int(saved["epochs"])),
                                 "threads": cfg.threads, "device": cfg.device, "patch": tuple(saved["patch"]),
                                 "spacing": tuple(saved["spacing"]), "labels": tuple(saved["labels"]),
                                 "channels": tuple(saved.get("channels", ("T2",)))})
        except (TypeError, ValueError) as exc:
            raise InputError(f"'{out / 'last.pt'}' is not a ProstateAI training checkpoint ({_short(exc)}).") from exc

    init = load_model(cfg.init) if cfg.init else None  # (model, metadata), read once
    train_cases, val_cases, split = _prepare(cfg, log, init[1] if init else None)
    write_text(json.dumps(split, indent=2), out / "split.json")
    n_channels = train_cases[0].image.shape[0]
    net_cfg = network.NetConfig(**{**{"in_channels": n_channels, "out_channels": len(cfg.labels)}, **cfg.net})
    net_cfg = network.NetConfig.from_dict(net_cfg.to_dict())
    model = network.build_network(net_cfg).to(device)
    divisor = model.divisor
    if any(p % d for p, d in zip(cfg.patch, divisor)):
        raise InputError(f"Patch {cfg.patch} must be a multiple of {divisor} (z, y, x) for this network.")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    augment = ds.AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.augment.items()})
    mask_channels = [i for i, name in enumerate(cfg.channels) if preprocess.is_mask_channel(name)]
    sampler = ds.PatchSampler(train_cases, cfg.patch, augment, cfg.p_foreground, len(cfg.labels), cfg.seed,
                              mask_channels=mask_channels)

    history, best, start_epoch = [], {"dice": -float("inf"), "epoch": 0}, 1
    if init is not None and checkpoint is None:
        _initialise_from(model, init[0], cfg.init, log)
    if checkpoint is None:
        ema = weight_average(model, cfg.ema)
    else:
        try:  # a checkpoint of another network, or damaged state, is a user error, not a traceback
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            history, best, start_epoch = checkpoint["history"], checkpoint["best"], checkpoint["epoch"] + 1
            sampler.rng.bit_generator.state = checkpoint["sampler_rng"]
            torch.set_rng_state(checkpoint["torch_rng"])
            ema = weight_average(model, cfg.ema)  # made from the restored weights, then given its saved state
            if ema is not None and checkpoint.get("ema") is not None:
                ema.load_state_dict(checkpoint["ema"])
            log(f"resumed from epoch {checkpoint['epoch']} (best Dice {best['dice']:.4f} at epoch {best['epoch']})")
        except InputError:
            raise
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise InputError(f"'{out / 'last.pt'}' does not fit this training run ({_short(exc)}).") from exc
    evaluated = ema.module if ema is not None else model  # what is validated and saved

    total_iterations = cfg.epochs * cfg.iterations
    params = network.count_parameters(model)
    log(f"network: {params / 1e6:.2f} M parameters, patch {cfg.patch}, batch {cfg.batch}, device {device}, "
        f"{cfg.threads} thread(s), {cfg.epochs} epochs x {cfg.iterations} iterations")
    model.train()
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.time()
        losses = []
        for it in range(cfg.iterations):
            step = (epoch - 1) * cfg.iterations + it
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, total_iterations)
            images, labels = sampler.batch(cfg.batch)
            loss = deep_supervision_loss(model(images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise RuntimeError(f"Training diverged (loss {losses[-1]}) at epoch {epoch}, iteration {it}.")
            if progress is not None and (it + 1) % 10 == 0:
                progress((step + 1) / total_iterations, f"epoch {epoch}/{cfg.epochs} iteration {it + 1}/{cfg.iterations}")
        train_seconds = time.time() - t0
        val_dice, val_raw, per_case, val_seconds = "", "", {}, 0.0
        if val_cases and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            t1 = time.time()
            per_case = validate(evaluated, val_cases, cfg.patch, cfg.val_overlap, device,
                                flip_axes=VALIDATION_FLIPS if cfg.val_tta else ())
            val_dice = float(np.mean([d["lcc"] for d in per_case.values()]))
            val_raw = float(np.mean([d["raw"] for d in per_case.values()]))
            val_seconds = time.time() - t1
        score = val_dice if val_dice != "" else (None if val_cases else -float(np.mean(losses)))
        improved = score is not None and score > best["dice"]
        if improved:
            best = {"dice": float(score), "epoch": epoch, "per_case": per_case}
            meta = model_metadata(cfg, net_cfg, n_channels, {
                "validation": {"mean_dice": val_dice if val_dice != "" else None, "epoch": epoch, "per_case": per_case},
                "split": split, "parameters": params,
            })
            save_model(evaluated, meta, out / "model.pt")
        history.append({
            "epoch": epoch, "iterations": epoch * cfg.iterations, "train_loss": round(float(np.mean(losses)), 5),
            "val_dice": round(val_dice, 5) if val_dice != "" else "",
            "val_dice_raw": round(val_raw, 5) if val_raw != "" else "", "lr": f"{optimizer.param_groups[0]['lr']:.3g}",
            "train_seconds": round(train_seconds, 1), "val_seconds": round(val_seconds, 1),
            "best": int(improved),
        })
        _save_atomic(_plain({  # plain values only: read back with weights_only=True (load_checkpoint)
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "ema": ema.state_dict() if ema is not None else None,
            "history": history, "best": best, "sampler_rng": sampler.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }), out / "last.pt")
        write_history(history, out)
        message = (f"epoch {epoch}/{cfg.epochs} loss {np.mean(losses):.4f} "
                   + (f"val Dice {val_dice:.4f} (raw {val_raw:.4f}) " if val_dice != "" else "")
                   + (f"(best {best['dice']:.4f} @ {best['epoch']}) " if best["epoch"] else "(not validated yet) ")
                   + f"lr {optimizer.param_groups[0]['lr']:.2e} "
                   + f"{train_seconds:.0f} s + val {val_seconds:.0f} s")
        log(message)
        if progress is not None:
            progress(epoch / cfg.epochs, message)
    if val_cases and (out / "model.pt").is_file():
        best["deployment"] = finalize_run(out, cfg.data, cfg.threads, log)
    return {"best": best, "history": history, "out": str(out)}
