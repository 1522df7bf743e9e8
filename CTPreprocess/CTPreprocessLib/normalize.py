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

from ProstateAICore import imageio
from ProstateAICore.errors import InputError
from ProstateAICore.intensity import check_minmax_dtype, mean_std, minmax_array, validate_window

_SLAB_VOXELS = 1 << 22  # float64 temporaries of ~32 MiB at most


def image_range(image: sitk.Image) -> tuple[float, float]:
    array = sitk.GetArrayViewFromImage(image)
    return float(array.min()), float(array.max())


def minmax(image: sitk.Image, lo: float | None = None, hi: float | None = None, dtype: str = "uint8") -> sitk.Image:
    """Linear min-max normalisation; lo/hi default to the image's own minimum/maximum."""
    check_minmax_dtype(dtype)
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
    inside = imageio.validate_mask(image, mask, "z-score mask")
    mean, std = mean_std(array[inside] if inside is not None else array)
    if not np.isfinite(std) or std == 0.0:
        raise InputError("The image is constant inside the z-score region (standard deviation 0); z-score is undefined.")
    return mean, std


def zscore_array(values, mean: float, std: float) -> np.ndarray:
    return ((np.asarray(values, dtype=np.float64) - mean) / std).astype(np.float32)


def zscore(image: sitk.Image, mask: sitk.Image | None = None) -> sitk.Image:
    """(x - mean) / std as float32, statistics from the mask (same grid as the image) or the whole image."""
    mean, std = zscore_stats(image, mask)
    return sitk.ShiftScale(sitk.Cast(image, sitk.sitkFloat32), -mean, 1.0 / std)
