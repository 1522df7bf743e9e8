"""Crop or pad to a fixed voxel size, and pick a subset of slices.

Every kept voxel keeps its physical position: the output origin is the physical point of the first
output voxel, computed through the input's index -> physical transform (so any direction matrix works).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import require_same_grid

CENTERS = ("center", "mask")


def check_size(size, dimension: int) -> tuple[int, ...]:
    size = tuple(size)
    if len(size) != dimension or not all(int(s) == s and s >= 1 for s in size):
        raise InputError(f"Size must be {dimension} positive whole numbers of voxels (got {size}).")
    return tuple(int(s) for s in size)


def _mask_center(image: sitk.Image, mask: sitk.Image) -> np.ndarray:
    """Centre (x, y, z index, continuous) of the mask's bounding box."""
    aligned = require_same_grid(image, mask, ("image", "crop mask"))  # keep alive: the view does not own it
    inside = sitk.GetArrayViewFromImage(aligned) != 0
    if not inside.any():
        raise InputError("The crop mask is empty (no non-zero voxel); it cannot give a crop centre.")
    zyx = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return np.array([(idx[0] + idx[-1]) / 2.0 for idx in zyx][::-1])


def crop_start(old_size, new_size, center=None) -> tuple[int, ...]:
    """First input index of the output box on each axis (negative = padding before).

    Centred on the image, or on `center` (continuous index); a crop never leaves the image when it fits.
    """
    starts = []
    for axis, (old, new) in enumerate(zip(old_size, new_size)):
        start = (old - new) // 2 if center is None else int(np.floor(center[axis] - (new - 1) / 2.0 + 0.5))
        lowest, highest = min(0, old - new), max(0, old - new)
        starts.append(int(np.clip(start, lowest, highest)))
    return tuple(starts)


def _pad_scalar(pad_value: float, dtype: np.dtype):
    value = np.asarray(pad_value, dtype=np.float64)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if value != np.round(value) or not info.min <= value <= info.max:
            raise InputError(f"Pad value {pad_value:g} does not fit the image type {dtype} ({info.min} .. {info.max}).")
    return value.astype(dtype)


def crop_or_pad(image: sitk.Image, size, pad_value: float, center: str = "center",
                mask: sitk.Image | None = None) -> sitk.Image:
    """Crop and/or pad each axis to `size` (x, y, z voxels), filling new voxels with `pad_value`.

    center="center": the box is centred on the image; "mask": on the centre of the mask's bounding box
    (mask on the image grid), shifted as needed to stay inside the image where it fits.
    """
    size = check_size(size, image.GetDimension())
    if center not in CENTERS:
        raise InputError(f"Unknown crop centre '{center}'; choose one of: {', '.join(CENTERS)}.")
    if center == "mask" and mask is None:
        raise InputError("Crop centre 'mask' needs a mask.")
    focus = _mask_center(image, mask) if center == "mask" else None
    start = crop_start(image.GetSize(), size, focus)
    source = sitk.GetArrayViewFromImage(image)
    out = np.full(size[::-1], _pad_scalar(pad_value, source.dtype), dtype=source.dtype)
    src, dst = [], []
    for old, new, s in zip(image.GetSize(), size, start):
        lo, hi = max(0, s), min(old, s + new)  # overlap in input indices
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst[::-1])] = source[tuple(src[::-1])]
    result = sitk.GetImageFromArray(out)
    result.SetSpacing(image.GetSpacing())
    result.SetDirection(image.GetDirection())
    result.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([float(s) for s in start]))
    return result


def reduce_slices(image: sitk.Image, n: int, mode: str = "even", seed: int = 0) -> tuple[sitk.Image, np.ndarray]:
    """Keep `n` of the image's axial (z index) slices: evenly spread, or a random sorted subset.

    Geometry: a regular grid cannot hold unevenly spaced slices, so the output starts at the first kept
    slice and spaces the n slices evenly up to the last kept one (z spacing = span / (n - 1)). This is exact
    for "even" picks from a regular stride and approximate otherwise; `indices` gives the true input slices.
    """
    depth = image.GetSize()[2]
    if int(n) != n or not 2 <= n <= depth:
        raise InputError(f"Number of slices must be a whole number between 2 and {depth} (got {n}).")
    n = int(n)
    if mode == "even":
        indices = np.unique(np.round(np.linspace(0, depth - 1, n)).astype(int))
    elif mode == "random":
        indices = np.sort(np.random.default_rng(seed).choice(depth, size=n, replace=False))
    else:
        raise InputError(f"Unknown slice selection mode '{mode}'; choose 'even' or 'random'.")
    array = sitk.GetArrayViewFromImage(image)[indices]
    result = sitk.GetImageFromArray(np.ascontiguousarray(array))
    spacing = list(image.GetSpacing())
    spacing[2] *= (indices[-1] - indices[0]) / (n - 1)
    result.SetSpacing(spacing)
    result.SetDirection(image.GetDirection())
    result.SetOrigin(image.TransformIndexToPhysicalPoint((0, 0, int(indices[0]))))
    return result, indices
