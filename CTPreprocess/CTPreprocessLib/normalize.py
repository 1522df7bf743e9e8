"""Intensity normalisation: linear min-max to uint8 / uint16 / float32, and z-score.

Min-max maps lo -> 0 and hi -> 255 (uint8), 65535 (uint16) or 1.0 (float32) and clips outside:
    uint8  = clip(rint((x - lo) / (hi - lo) * 255), 0, 255)
with np.rint, i.e. round half to even (8.5 -> 8, 9.5 -> 10). Computed in float64 slab by slab so
that the rounding is exact for integer HU and memory stays bounded. With window ends as lo/hi this is
"dataset-level" normalisation (same mapping for every image); without, the image's own min/max.
Unsigned outputs stay unsigned (METHODS.md). The output always has the input's geometry.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ProstateAILib.errors import InputError
from ProstateAILib.imageio import require_same_grid

from .window import validate_window

DTYPES = ("float32", "uint8", "uint16")
_SCALE = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}
_SLAB_VOXELS = 1 << 22  # float64 temporaries of ~32 MiB at most


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise InputError(f"Unknown output type '{dtype}'; choose one of: {', '.join(DTYPES)}.")
    return dtype


def minmax_array(values, lo: float, hi: float, dtype: str = "uint8") -> np.ndarray:
    """The min-max mapping on a numpy array or scalar (also used to map a pad value into output units)."""
    _check_dtype(dtype)
    scale = _SCALE[dtype]
    t = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo) * scale
    t = np.clip(t, 0.0, scale, out=t if isinstance(t, np.ndarray) else None)  # in place for arrays; scalars too
    if dtype == "float32":
        return t.astype(np.float32)
    return np.rint(t).astype(dtype)


def image_range(image: sitk.Image) -> tuple[float, float]:
    array = sitk.GetArrayViewFromImage(image)
    return float(array.min()), float(array.max())


def minmax(image: sitk.Image, lo: float | None = None, hi: float | None = None, dtype: str = "uint8") -> sitk.Image:
    """Linear min-max normalisation; lo/hi default to the image's own minimum/maximum."""
    _check_dtype(dtype)
    if lo is None or hi is None:
        image_lo, image_hi = image_range(image)
        lo = image_lo if lo is None else lo
        hi = image_hi if hi is None else hi
    lo, hi = validate_window(lo, hi, "min-max range")
    source = sitk.GetArrayViewFromImage(image)
    out = np.empty(source.shape, dtype=dtype)
    slab = max(1, _SLAB_VOXELS // max(1, source[0].size))
    for start in range(0, source.shape[0], slab):
        out[start:start + slab] = minmax_array(source[start:start + slab], lo, hi, dtype)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def zscore_stats(image: sitk.Image, mask: sitk.Image | None = None) -> tuple[float, float]:
    """Mean and (population) standard deviation over the mask's non-zero voxels, or all voxels."""
    array = sitk.GetArrayViewFromImage(image)
    if mask is not None:
        aligned = require_same_grid(image, mask)  # keep alive: a numpy view does not own the image
        inside = sitk.GetArrayViewFromImage(aligned) != 0
        if not inside.any():
            raise InputError("The z-score mask is empty (no non-zero voxel); draw or choose a mask that covers tissue.")
        values = array[inside]
    else:
        values = array.reshape(-1)
    # Two passes in float64 slabs: exact enough and no full-size float64 copy.
    step = _SLAB_VOXELS
    total = sum(float(np.sum(values[i:i + step], dtype=np.float64)) for i in range(0, values.size, step))
    mean = total / values.size
    squares = sum(
        float(np.sum(np.square(values[i:i + step].astype(np.float64) - mean))) for i in range(0, values.size, step)
    )
    std = (squares / values.size) ** 0.5
    if not np.isfinite(std) or std == 0.0:
        raise InputError("The image is constant inside the z-score region (standard deviation 0); z-score is undefined.")
    return mean, std


def zscore_array(values, mean: float, std: float) -> np.ndarray:
    return ((np.asarray(values, dtype=np.float64) - mean) / std).astype(np.float32)


def zscore(image: sitk.Image, mask: sitk.Image | None = None) -> sitk.Image:
    """(x - mean) / std as float32, statistics from the mask (same grid as the image) or the whole image."""
    mean, std = zscore_stats(image, mask)
    return sitk.ShiftScale(sitk.Cast(image, sitk.sitkFloat32), -mean, 1.0 / std)
