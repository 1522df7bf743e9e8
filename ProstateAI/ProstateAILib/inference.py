"""Sliding-window inference with Gaussian-weighted blending and optional flip TTA.

Used by validation during training and by `prostateai segment`. Why Gaussian weights: patch
borders see less context and are less reliable, so each window's softmax is weighted by a
Gaussian centred on the patch (sigma = 1/8 of the patch size, nnU-Net) before averaging.

The windows are cut, flipped, blended and normalised with NumPy, whatever runs the network (torch on the
CPU or a GPU, or ONNX Runtime): one implementation, and a `segment` on the ONNX Runtime path never
imports torch (about 2 s of a new process's start).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ProstateAICore.progress import ProgressFn

from .postprocess import foreground_mask, keep_largest_component  # noqa: F401  (the deployed post-processing)


def gaussian_weights(patch: tuple[int, int, int], sigma_scale: float = 1.0 / 8, floor: float = 1e-3) -> np.ndarray:
    """Separable Gaussian importance map (float32, max 1) of shape `patch`; clamped above 0 so every
    voxel covered by a window gets a positive weight."""
    axes = []
    for size in patch:
        centre = (size - 1) / 2.0
        sigma = max(size * sigma_scale, 1e-6)
        coords = np.arange(size, dtype=np.float32)
        axes.append(np.exp(-0.5 * ((coords - centre) / np.float32(sigma)) ** 2).astype(np.float32))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    return np.maximum(weights, np.float32(floor)).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spaced window starts so windows overlap by about `overlap` and the last one ends at the border."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = math.ceil((size - patch) / step) + 1
    if n == 1:
        return [0]
    actual = (size - patch) / (n - 1)
    return [int(round(i * actual)) for i in range(n)]


def _pad_to(volume: np.ndarray, patch) -> tuple[np.ndarray, list[slice]]:
    """Zero-pad (C, Z, Y, X) symmetrically so each axis is at least the patch size."""
    pads, crop = [(0, 0)], []
    for size, p in zip(volume.shape[1:], patch):
        total = max(0, p - size)
        before = total // 2
        pads.append((before, total - before))
        crop.append(slice(before, before + size))
    if any(sum(pair) for pair in pads):
        volume = np.pad(volume, pads)
    return volume, crop


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def sliding_window(
    model,
    volume,
    patch: tuple[int, int, int],
    overlap: float = 0.5,
    flip_axes: tuple[tuple[int, ...], ...] = (),
    batch_size: int = 2,
    device=None,
    sigma_scale: float = 1.0 / 8,
    progress: ProgressFn | None = None,
    region: tuple[slice, slice, slice] | None = None,
) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) for a (C, Z, Y, X) volume.

    `model` maps (N, C, pz, py, px) to logits (N, K, pz, py, px): a torch module in eval mode (run on
    `device`) or an `onnx_backend.OrtModel`. `flip_axes`: extra TTA passes, each a tuple of spatial axes
    (0 = z, 1 = y, 2 = x) to mirror; e.g. ((2,),) adds a left-right flipped pass. Predictions are
    averaged over passes.
    `region`: (z, y, x) slices of `volume`; windows are laid out over the region only (at least one
    window wide, inside the volume) and voxels no window covers get background probability 1.
    """
    volume = np.asarray(volume, dtype=np.float32)
    padded, crop = _pad_to(volume, patch)
    shape = padded.shape[1:]
    weights = gaussian_weights(patch, sigma_scale)
    if region is None:
        starts = list(itertools.product(*(window_starts(s, p, overlap) for s, p in zip(shape, patch))))
    else:
        starts = list(itertools.product(*(_region_starts(s, p, overlap, r, c.start)
                                          for s, p, r, c in zip(shape, patch, region, crop))))
    accum = None
    norm = np.zeros(shape, np.float32)
    passes = [()] + [tuple(a) for a in flip_axes]
    for done in range(0, len(starts), batch_size):
        chunk = starts[done:done + batch_size]
        windows = np.stack([padded[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]] for z, y, x in chunk])
        # One forward for the windows and all their flipped copies: bigger batches are faster on
        # CPU than several small ones (and never batch-1, see _forward).
        inputs = np.concatenate([np.flip(windows, [a + 2 for a in axes]) if axes else windows for axes in passes])
        out = softmax(_logits(model, np.ascontiguousarray(inputs), device))
        probs = 0.0
        for k, axes in enumerate(passes):
            part = out[k * len(chunk):(k + 1) * len(chunk)]
            probs = probs + (np.flip(part, [a + 2 for a in axes]) if axes else part)
        probs = probs / np.float32(len(passes))
        if accum is None:
            accum = np.zeros((probs.shape[1],) + tuple(shape), np.float32)
        for (z, y, x), p in zip(chunk, probs):
            region_slices = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
            accum[(slice(None),) + region_slices] += p * weights
            norm[region_slices] += weights
        if progress is not None:
            progress(min(done + batch_size, len(starts)) / len(starts), "sliding-window inference")
    covered = norm > 0
    accum = np.where(covered, accum / np.maximum(norm, np.float32(1e-12)), np.float32(0.0)).astype(np.float32)
    if not bool(covered.all()):
        accum[0][~covered] = 1.0  # outside the region: background
    return np.ascontiguousarray(accum[(slice(None),) + tuple(crop)])


def _logits(model, batch: np.ndarray, device=None) -> np.ndarray:
    """The network's float32 logits for a NumPy batch (torch only imported for a torch model)."""
    run_numpy = getattr(model, "run_numpy", None)
    if run_numpy is not None:
        return run_numpy(batch)
    import torch

    with torch.no_grad():
        out = _forward(model, torch.from_numpy(batch).to(torch.device(device or "cpu")))
    return out.float().cpu().numpy()


def _region_starts(size: int, patch: int, overlap: float, region: slice, offset: int) -> list[int]:
    """Window starts on one padded axis covering `region` (unpadded indices; `offset` = padding before)."""
    lo, hi = region.start + offset, region.stop + offset
    if hi - lo <= patch:  # one window, centred on the region, kept inside the volume
        return [min(max(int(round((lo + hi - patch) / 2)), 0), max(size - patch, 0))]
    return [lo + start for start in window_starts(hi - lo, patch, overlap)]


def window_patch(settings: dict, shape_zyx, divisor=(1, 16, 16), max_inplane: int = 256) -> tuple[int, int, int]:
    """The inference window for a working volume of `shape_zyx`.

    "layout": "patch" uses the training patch (`patch_zyx`); "whole-plane" keeps the training
    patch's depth but covers the whole plane in one window (rounded up to the network's divisor,
    at most `max_inplane`): a fully convolutional net then sees the same context everywhere and
    needs 9x fewer in-plane windows on a 128 x 128 plane.
    """
    patch = tuple(int(v) for v in settings.get("patch_zyx", (16, 80, 80)))
    if settings.get("layout") == "whole-volume":  # one window over everything (the coarse localiser)
        return tuple(max(p, int(math.ceil(n / d) * d)) for p, n, d in zip(patch, shape_zyx, divisor))
    if settings.get("layout", "patch") != "whole-plane":
        return patch
    inplane = [min(max_inplane, int(math.ceil(n / d) * d)) for n, d in zip(shape_zyx[1:], divisor[1:])]
    return (patch[0], max(patch[1], inplane[0]), max(patch[2], inplane[1]))


def _forward(model, batch: torch.Tensor) -> torch.Tensor:
    """model(batch), never with a batch of one on CPU.

    Why: PyTorch's CPU heuristic sends small batch-1 3D convolutions to the slow reference
    kernel (slow_conv3d), ~3x slower per window than the oneDNN kernel it uses for batch >= 2.
    """
    import torch

    if batch.shape[0] == 1 and batch.device.type == "cpu":
        return model(torch.cat([batch, batch]))[:1]
    return model(batch)


def predict_probabilities(model, metadata: dict, channels, device="cpu", tta: bool = True,
                          overlap: float | None = None, progress: ProgressFn | None = None,
                          localiser=None, info: dict | None = None) -> np.ndarray:
    """Class probabilities (K, z, y, x) on the first channel's (T2) original grid.

    Repeats the model's preprocessing (working grid + normalisation from `metadata`), runs the
    sliding window on the working grid and resamples the probabilities back (linear).
    `localiser` = (model, metadata) of a coarse gland localiser: the windows then cover only the
    gland's box plus a margin (`localise_region`); the preprocessing is the same whole-volume one, so
    the windows see exactly what they would see in a whole-volume pass. `info` (a dict) receives what
    the localisation did.
    """
    from . import preprocess

    settings = metadata.get("inference", {})
    spacing = tuple(metadata["preprocess"]["spacing_xyz_mm"])
    volume, working = preprocess.to_working_image(list(channels), spacing, metadata.get("channels"))
    flips = tuple(tuple(a) for a in settings.get("tta_flip_axes_zyx", [[2]])) if tta else ()
    patch = window_patch(settings, volume.shape[1:], getattr(model, "divisor", (1, 16, 16)))
    overlap = settings.get("overlap", 0.5) if overlap is None else overlap
    info = {} if info is None else info
    region = None
    if localiser is not None:
        # The localiser reads the working image (already resampled): a second B-spline pass over a
        # 512 x 512 x 40 original would cost more than the whole localisation.
        region = localise_region(*localiser, working, working, patch, device=device, info=info)
    probs = sliding_window(model, volume, patch, overlap=overlap, flip_axes=flips, device=device,
                           progress=progress, region=region)
    threshold = float(settings.get("threshold", 0.5))
    for retry in (True, False):
        reason = region is not None and _region_doubt(probs[1:].sum(0) >= threshold, region, spacing)
        if not reason:
            break
        if retry and reason == CUT:  # the box was too tight: once more with a wider one
            region = _widen(region, volume.shape[1:], [m / s for m, s in zip(WIDEN_MM, spacing)][::-1])
            info["widened_box_zyx"] = [[r.start, r.stop] for r in region]
        else:  # the localiser was wrong: the whole volume
            info["fallback"] = f"{reason}: whole volume segmented"
            region = None
        probs = sliding_window(model, volume, patch, overlap=overlap, flip_axes=flips, device=device,
                               progress=progress, region=region)
    return preprocess.probabilities_to_original(probs, working, channels[0])


CUT = "the gland reached the edge of the localised box"
WIDEN_MM = (20.0, 20.0, 7.2)  # x, y, z added on each side when the first box cut the gland


def _widen(region, shape, by_voxels) -> tuple[slice, slice, slice]:
    return tuple(slice(max(0, r.start - math.ceil(b)), min(n, r.stop + math.ceil(b)))
                 for r, n, b in zip(region, shape, by_voxels))


LOCALISER_MARGIN_MM = (15.0, 15.0, 7.5)  # x, y, z around the coarse gland box (the coarse grid is 4 mm)


def localise_region(model, metadata: dict, t2, working, patch, device="cpu", margin_mm=LOCALISER_MARGIN_MM,
                    info: dict | None = None) -> tuple[slice, slice, slice] | None:
    """(z, y, x) slices of the fine `working` grid holding the gland found by the coarse localiser
    (largest component of p >= 0.5 on its own grid) plus `margin_mm`, or None (whole volume) when it
    finds nothing. The region is at least one window (`patch`) wide where the volume allows."""
    from . import preprocess

    info = {} if info is None else info
    spacing = tuple(metadata["preprocess"]["spacing_xyz_mm"])
    coarse, coarse_grid = preprocess.to_working_image([t2], spacing, metadata.get("channels"))
    coarse_patch = window_patch({**metadata.get("inference", {}), "layout": "whole-volume"}, coarse.shape[1:],
                                getattr(model, "divisor", (1, 16, 16)))
    found = keep_largest_component(sliding_window(model, coarse, coarse_patch, overlap=0.0, device=device)[1] >= 0.5)
    info["localiser"] = metadata.get("name", "localiser")
    if not found.any():
        info["fallback"] = "the localiser found no gland: whole volume segmented"
        return None
    idx = np.argwhere(found)
    corners = itertools.product(*[(lo - 0.5, hi + 0.5) for lo, hi in zip(idx.min(0)[::-1], idx.max(0)[::-1])])
    points = [working.TransformPhysicalPointToContinuousIndex(coarse_grid.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in c])) for c in corners]  # (x, y, z) fine-grid indices of the coarse box
    margin = [m / s for m, s in zip(margin_mm, working.GetSpacing())]
    # Rounded before floor/ceil: the corners often fall on whole indices, and a geometry that differs by
    # 1e-9 mm (a volume node's matrix, a NIfTI header) must not move the box, and with it every window.
    lo = [math.floor(round(min(p[a] for p in points) - margin[a], 4)) for a in range(3)][::-1]
    hi = [math.ceil(round(max(p[a] for p in points) + margin[a], 4)) + 1 for a in range(3)][::-1]
    shape = tuple(working.GetSize()[::-1])
    region = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, shape))
    info["box_zyx"] = [[r.start, r.stop] for r in region]
    info["box_fraction"] = round(float(np.prod([r.stop - r.start for r in region]) / np.prod(shape)), 4)
    return region


MIN_LOCALISED_ML = 5.0  # less foreground than this in the box: the localiser found something else


def _region_doubt(mask: np.ndarray, region, spacing_xyz) -> str | None:
    """Why the fine pass in `region` cannot be trusted (None when it can)."""
    if _touches_inner_border(mask, region, mask.shape):
        return CUT
    if mask.sum() * float(np.prod(spacing_xyz)) / 1000.0 < MIN_LOCALISED_ML:
        return f"less than {MIN_LOCALISED_ML:g} mL of gland in the localised box"
    return None


def _touches_inner_border(mask: np.ndarray, region, shape) -> bool:
    """Whether `mask` has voxels on a face of `region` that is not also a face of the volume."""
    for axis, (r, n) in enumerate(zip(region, shape)):
        for index, inner in ((r.start, r.start > 0), (r.stop - 1, r.stop < n)):
            if inner and mask.take(index, axis=axis).any():
                return True
    return False


def probabilities_to_labels(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 labels: binary models use the (validation-tuned) foreground threshold, others argmax."""
    if probs.shape[0] == 2:
        return (probs[1] >= threshold).astype(np.uint8)
    return probs.argmax(0).astype(np.uint8)


def segment_image(model, metadata: dict, channels, device="cpu", tta: bool = True, largest_component: bool = True,
                  progress: ProgressFn | None = None):
    """Label map (uint8 SimpleITK image on the T2 grid): the tuned threshold (binary models) or argmax,
    then per label the largest component (for a binary model exactly `foreground_mask`)."""
    import SimpleITK as sitk

    probs = predict_probabilities(model, metadata, channels, device=device, tta=tta, progress=progress)
    labels = probabilities_to_labels(probs, metadata.get("inference", {}).get("threshold", 0.5))
    if largest_component:
        for value in range(1, probs.shape[0]):
            component = keep_largest_component(labels == value)
            labels[(labels == value) & ~component] = 0
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(channels[0])
    return out
