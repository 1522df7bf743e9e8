"""CT windows: organ presets, level/width arithmetic, fast exact percentiles, histograms, clipping.

A window is a pair (lo, hi) in HU; a preset is a pair (level WL, width WW) with
window = [WL - WW/2, WL + WW/2] (values: ../shared/METHODS.md, corrected table).

Percentiles are computed from a counting histogram instead of a sort: for integer CT data this is
EXACT (same result as `np.quantile(..., method="linear")`) and about 5x faster on a 52 M-voxel CT.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from ProstateAILib.errors import InputError

# name -> (level WL, width WW) in HU.
PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 430.0),
    "stroke": (36.0, 24.0),
    "temporal_bones": (600.0, 2800.0),
    "head_neck_soft_tissue": (40.0, 375.0),
    "lungs": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen_soft_tissue": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "spine_soft_tissue": (50.0, 250.0),
    "spine_bone": (400.0, 1800.0),
}

PRESET_LABELS: dict[str, str] = {
    "brain": "Brain (head & neck)",
    "subdural": "Subdural (head & neck)",
    "stroke": "Stroke (head & neck)",
    "temporal_bones": "Temporal bones (head & neck)",
    "head_neck_soft_tissue": "Soft tissue (head & neck)",
    "lungs": "Lungs (chest)",
    "mediastinum": "Mediastinum (chest)",
    "abdomen_soft_tissue": "Soft tissue (abdomen)",
    "liver": "Liver (abdomen)",
    "spine_soft_tissue": "Soft tissue (spine)",
    "spine_bone": "Bone (spine)",
}

# Voxels per bincount call: the reused intp buffer (1 MiB) stays in cache. Measured (CPU time,
# 52 M int16 voxels): 2^16-2^18 about equal and best, 2^15 1.4x slower, one call on the whole array 3x.
_CHUNK = 1 << 17
# Integer data spanning more distinct values than this fall back to the float histogram.
_MAX_COUNT_BINS = 1 << 22
# Float data: at least this many bins, and bins no wider than _MAX_BIN_WIDTH (HU) when possible.
_MIN_FLOAT_BINS = 1 << 16
_MAX_BIN_WIDTH = 0.25


def window_from_level_width(level: float, width: float) -> tuple[float, float]:
    """(lo, hi) = (WL - WW/2, WL + WW/2)."""
    level, width = float(level), float(width)
    if not (math.isfinite(level) and math.isfinite(width)):
        raise InputError(f"Window level and width must be finite numbers (got WL={level}, WW={width}).")
    if width <= 0:
        raise InputError(f"Window width must be positive (got WW={width}).")
    return level - width / 2.0, level + width / 2.0


def level_width_from_window(lo: float, hi: float) -> tuple[float, float]:
    """Inverse of window_from_level_width (for showing a window as WL/WW)."""
    return (lo + hi) / 2.0, hi - lo


def window_from_preset(name: str) -> tuple[float, float]:
    """(lo, hi) of a named preset; unknown names raise InputError listing the valid ones."""
    if name not in PRESETS:
        raise InputError(f"Unknown window preset '{name}'; valid presets: {', '.join(PRESETS)}.")
    return window_from_level_width(*PRESETS[name])


def validate_window(lo: float, hi: float, what: str = "window") -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"The {what} ends must be finite numbers (got [{lo}, {hi}]).")
    if lo >= hi:
        raise InputError(f"The {what} is empty: low end {lo:g} is not below high end {hi:g}.")
    return lo, hi


def _as_array(image_or_array) -> np.ndarray:
    if isinstance(image_or_array, sitk.Image):
        return sitk.GetArrayViewFromImage(image_or_array)
    return np.asarray(image_or_array)


def integer_counts(array: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Exact histogram of integer data: (counts, offset), counts[i] = number of voxels equal to offset + i.

    Returns None for non-integer data or when the value range is too wide to count.
    """
    flat = np.ravel(_as_array(array))
    if flat.dtype == np.bool_:
        flat = flat.view(np.uint8)
    if not np.issubdtype(flat.dtype, np.integer) or flat.size == 0:
        return None
    lo, hi = int(flat.min()), int(flat.max())
    n_bins = hi - lo + 1
    if n_bins > _MAX_COUNT_BINS:
        return None
    counts = np.zeros(n_bins, np.int64)
    # bincount wants intp; writing value - lo straight into one reused intp buffer saves the copy
    # and allocation bincount would otherwise make per call.
    index = np.empty(min(_CHUNK, flat.size), np.intp)
    if flat.dtype.itemsize <= 2:
        # The subtraction runs in the unsigned type, where it wraps modulo 2^bits and so yields
        # exactly value - lo (the range fits); only the result is widened to intp.
        source = flat.view(np.dtype(f"u{flat.dtype.itemsize}"))
        offset = source.dtype.type(lo % (1 << (8 * flat.dtype.itemsize)))
    else:
        source, offset = flat, lo
    for start in range(0, flat.size, _CHUNK):
        chunk = source[start:start + _CHUNK]
        shifted = index[:chunk.size]
        np.subtract(chunk, offset, out=shifted, casting="unsafe")
        counts += np.bincount(shifted, minlength=n_bins)
    return counts, lo


def _float_counts(flat: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, float]:
    """Fine histogram of real data in [lo, hi]: (counts, bin_width), bins [lo + i*w, lo + (i+1)*w)."""
    span = hi - lo
    if span == 0:
        return np.array([flat.size], np.int64), 1.0
    n_bins = int(min(max(_MIN_FLOAT_BINS, math.ceil(span / _MAX_BIN_WIDTH)), _MAX_COUNT_BINS))
    # float32 data are binned in float32 (1.6x faster than float64); rounding is monotone, so bins
    # stay ordered and counts consistent, with edges off by at most ~1e-4 HU. Wide integers: float64.
    small_float = np.issubdtype(flat.dtype, np.floating) and flat.dtype.itemsize <= 4
    work = np.dtype(np.float32) if small_float else np.dtype(np.float64)
    lo_w, scale_w = work.type(lo), work.type(n_bins / span)
    counts = np.zeros(n_bins + 1, np.int64)  # +1: the maximum (index n_bins) is folded back below
    values = np.empty(min(_CHUNK, flat.size), work)
    index = np.empty(min(_CHUNK, flat.size), np.intp)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK]
        scaled_values, bins = values[:chunk.size], index[:chunk.size]
        np.subtract(chunk, lo_w, out=scaled_values, casting="unsafe")
        scaled_values *= scale_w
        bins[...] = scaled_values  # truncation = floor, as values are >= 0
        counts += np.bincount(bins, minlength=n_bins + 1)[: n_bins + 1]
    counts[n_bins - 1] += counts[n_bins]
    return counts[:n_bins], span / n_bins


def _order_statistics(cumulative: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Bin holding the k-th smallest value (0-based) for each k: first bin with cumulative > k."""
    return np.searchsorted(cumulative, ranks, side="right")


def quantiles(image_or_array, qs) -> np.ndarray:
    """Quantiles with linear interpolation, like np.quantile(method="linear"), from a histogram.

    Integer data: exact. Float data: error below one bin (<= 0.25 HU for a CT range, less for
    narrower ranges), from interpolating uniformly inside the bin.
    """
    qs = np.atleast_1d(np.asarray(qs, dtype=np.float64))
    if np.any(~np.isfinite(qs)) or np.any(qs < 0) or np.any(qs > 1):
        raise InputError(f"Quantiles must lie in [0, 1] (got {qs.tolist()}); e.g. 0.6 and 0.99.")
    array = _as_array(image_or_array)
    if array.size == 0:
        raise InputError("Cannot compute percentiles of an empty image.")
    positions = (array.size - 1) * qs
    lower = np.floor(positions).astype(np.int64)
    fraction = positions - lower
    upper = np.minimum(lower + 1, array.size - 1)
    exact = integer_counts(array)
    if exact is not None:
        counts, offset = exact
        cumulative = np.cumsum(counts)
        v0 = _order_statistics(cumulative, lower) + offset
        v1 = _order_statistics(cumulative, upper) + offset
    else:
        flat = np.ravel(array)
        lo, hi_value = float(flat.min()), float(flat.max())  # NaN propagates into both
        if not (math.isfinite(lo) and math.isfinite(hi_value)):
            raise InputError("The image contains NaN or infinite voxels; percentiles are undefined.")
        counts, width = _float_counts(flat, lo, hi_value)
        cumulative = np.cumsum(counts)
        before = cumulative - counts

        def estimate(ranks):
            bins = _order_statistics(cumulative, ranks)
            # Spread the bin's voxels evenly over the bin: the (r+0.5)/count point of the bin.
            inside = (ranks - before[bins] + 0.5) / counts[bins]
            values = np.clip(lo + (bins + inside) * width, lo, hi_value)
            # The extremes are known exactly.
            return np.where(ranks == 0, lo, np.where(ranks == flat.size - 1, hi_value, values))

        v0, v1 = estimate(lower), estimate(upper)
    return v0 + fraction * (v1 - v0)


def check_quantiles(qlo: float, qhi: float) -> tuple[float, float]:
    qlo, qhi = float(qlo), float(qhi)
    for q in (qlo, qhi):
        if not (0.0 <= q <= 1.0):
            raise InputError(f"Quantiles must lie in [0, 1] (got {qlo:g}, {qhi:g}); e.g. 0.6 0.99 (not percent).")
    if qlo >= qhi:
        raise InputError(f"The low quantile ({qlo:g}) must be below the high quantile ({qhi:g}).")
    return qlo, qhi


def percentile_window(image_or_array, qlo: float = 0.6, qhi: float = 0.99) -> tuple[float, float]:
    """Window between two quantiles (CT framework default 0.6 / 0.99), quantiles in [0, 1]."""
    qlo, qhi = check_quantiles(qlo, qhi)
    lo, hi = quantiles(image_or_array, (qlo, qhi))
    return float(lo), float(hi)


def histogram(array, bins: int = 256, value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Same result as np.histogram(array, bins, value_range), faster for integer CT data (counts each value once)."""
    array = _as_array(array)
    if array.size == 0:
        raise InputError("Cannot compute the histogram of an empty image.")
    exact = integer_counts(array)
    if exact is None:
        return np.histogram(array, bins=bins, range=value_range)
    counts, offset = exact
    values = np.arange(offset, offset + counts.size, dtype=np.float64)
    if value_range is None:
        value_range = (float(values[0]), float(values[-1]))
    hist, edges = np.histogram(values, bins=bins, range=value_range, weights=counts)
    return hist.astype(np.int64), edges


def apply_window(image: sitk.Image, lo: float, hi: float) -> sitk.Image:
    """Clip to [lo, hi]; float32 out (window ends need not be integers), geometry kept."""
    lo, hi = validate_window(lo, hi)
    return sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, lo, hi)
