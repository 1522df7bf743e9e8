"""Intensity normalisation at image, patient or dataset level.

Methods:
- "percentile": (I - p_low) / (p_high - p_low), p1 / p99 by default (Pellicer-Valero 2022);
- "zscore":     (I - mean) / std.

Statistics come from the voxels inside a mask when one is given, else from the whole volume.
Levels differ only in which voxels the statistics pool:
- image:   `normalize(image, ...)` -- the image's own statistics;
- patient: `fit_stats([t2_a, t2_b, ...], masks)` then `apply_stats(image, stats)` for each --
           several volumes share one set of statistics;
- dataset: the same, with the statistics saved (`save_stats`, JSON) and re-applied later
           (`load_stats`), so new data gets exactly the training set's scaling.

Options: `shift_positive` (add -min first when the image has negative values) and `cut_tails`
(clip the input to [p_low, p_high] before scaling, e.g. percentile output then lies in [0, 1]).
Output: float32 on the input grid.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from ProstateAICore import imageio
from ProstateAICore.errors import InputError
from ProstateAICore.geometry import image_like
from ProstateAICore.intensity import mean_std, percentiles


FORMAT = "prostateai-normalization-stats"
FORMAT_VERSION = 1
METHODS = ("percentile", "zscore")


@dataclass(frozen=True)
class NormStats:
    """Statistics of the voxels a normalisation is scaled by (all methods' numbers, one fit)."""

    method: str
    low_percentile: float
    high_percentile: float
    p_low: float
    p_high: float
    mean: float
    std: float
    n_images: int
    n_voxels: int
    shift_positive: bool = False
    cut_tails: bool = False
    format_version: int = FORMAT_VERSION

    @property
    def scale(self) -> tuple[float, float]:
        """(offset, divisor): output = (I - offset) / divisor."""
        if self.method == "percentile":
            return self.p_low, self.p_high - self.p_low
        return self.mean, self.std


def fit_stats(
    images: Sequence[sitk.Image],
    masks: Sequence[sitk.Image | None] | None = None,
    method: str = "percentile",
    low_percentile: float = 1.0,
    high_percentile: float = 99.0,
    shift_positive: bool = False,
    cut_tails: bool = False,
) -> NormStats:
    """Pool the (masked) voxels of one or more volumes and compute their statistics."""
    _check_method(method, low_percentile, high_percentile)
    images = list(images)
    if not images:
        raise InputError("Normalisation statistics need at least one image.")
    if masks is not None and len(masks) != len(images):
        raise InputError(f"Got {len(images)} images but {len(masks)} masks; give one mask per image.")
    pooled = np.concatenate([_selected_values(img, masks[i] if masks is not None else None, shift_positive)
                             for i, img in enumerate(images)])
    p_low, p_high = percentiles(pooled, [low_percentile, high_percentile])
    mean, std = mean_std(pooled)
    stats = NormStats(method, float(low_percentile), float(high_percentile), float(p_low), float(p_high),
                      mean, std, len(images), int(pooled.size), bool(shift_positive), bool(cut_tails))
    _require_usable(stats)
    return stats


def apply_stats(image: sitk.Image, stats: NormStats) -> sitk.Image:
    """Normalise `image` with given statistics; float32 on the image grid."""
    array = _shifted(imageio.validate_volume(image), stats.shift_positive).astype(np.float32)
    if stats.cut_tails:
        np.clip(array, stats.p_low, stats.p_high, out=array)
    offset, divisor = stats.scale
    return image_like((array - np.float32(offset)) / np.float32(divisor), image)


def normalize(
    image: sitk.Image,
    method: str = "percentile",
    mask: sitk.Image | None = None,
    low_percentile: float = 1.0,
    high_percentile: float = 99.0,
    shift_positive: bool = False,
    cut_tails: bool = False,
) -> sitk.Image:
    """Image-level normalisation: the image's own (masked) statistics."""
    stats = fit_stats([image], [mask], method, low_percentile, high_percentile, shift_positive, cut_tails)
    return apply_stats(image, stats)


def _check_method(method: str, low: float, high: float) -> None:
    if method not in METHODS:
        raise InputError(f"Unknown normalisation method '{method}'; use one of {', '.join(METHODS)}.")
    if not 0 <= low < high <= 100:
        raise InputError(f"Percentiles must satisfy 0 <= low < high <= 100 (got {low}, {high}).")


def _selected_values(image: sitk.Image, mask: sitk.Image | None, shift_positive: bool) -> np.ndarray:
    array = _shifted(imageio.validate_volume(image), shift_positive)
    inside = imageio.validate_mask(image, mask)
    return array[inside] if inside is not None else array.ravel()


def _shifted(array: np.ndarray, shift_positive: bool) -> np.ndarray:
    """Add -min when the image has negative values (per image, before statistics)."""
    if shift_positive and array.min() < 0:
        return array.astype(np.float64) - float(array.min())
    return array


def _require_usable(stats: NormStats) -> None:
    offset, divisor = stats.scale
    if not (math.isfinite(offset) and math.isfinite(divisor)) or divisor <= 0:
        what = f"p{stats.low_percentile:g} = p{stats.high_percentile:g}" if stats.method == "percentile" else "std = 0"
        raise InputError(f"Cannot normalise: the selected voxels give {what} (a constant region); check the mask.")


# --- JSON statistics files ---------------------------------------------------------------------


def stats_json(stats: NormStats) -> str:
    return json.dumps({"format": FORMAT, **asdict(stats)}, indent=2) + "\n"


def save_stats(stats: NormStats, path: str | os.PathLike) -> Path:
    """Write the statistics as JSON, atomically (dataset level: re-apply with load_stats)."""
    return imageio.write_text(stats_json(stats), path)


def load_stats(path: str | os.PathLike) -> NormStats:
    path = Path(path)
    payload = imageio.read_json(path, "Statistics file")
    if not isinstance(payload, dict) or payload.pop("format", None) != FORMAT:
        raise InputError(f"'{path}' is not a ProstateAI normalisation statistics file (\"format\": \"{FORMAT}\").")
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"Statistics file '{path}' has format_version {payload.get('format_version')!r}; "
            f"this ProstateAI reads version {FORMAT_VERSION}."
        )
    try:
        stats = NormStats(**payload)
    except TypeError as exc:
        raise InputError(f"Statistics file '{path}' is malformed ({exc}).") from None
    _check_method(stats.method, stats.low_percentile, stats.high_percentile)
    _require_usable(stats)
    return stats

