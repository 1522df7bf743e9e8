"""Intensity statistics every module shares: exact percentiles and histograms, windows, min-max and z-score.

Percentiles come from a counting histogram instead of a sort: for integer data (CT in HU, most MR
files) this is EXACT -- bit for bit `np.quantile(..., method="linear")` -- and about 5x faster on a
52 M-voxel CT. Real-valued data either get the exact sort (`exact=True`, what MR statistics use) or a
fine histogram estimate whose error is below one bin (CT windows on float volumes).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from .errors import InputError

# Voxels per bincount call: the reused intp buffer (1 MiB) stays in cache. Measured (CPU time,
# 52 M int16 voxels): 2^16-2^18 about equal and best, 2^15 1.4x slower, one call on the whole array 3x.
_CHUNK = 1 << 17
# Integer data spanning more distinct values than this are not counted (sorted or binned instead).
_MAX_COUNT_BINS = 1 << 22
# Float data: at least this many bins, and bins no wider than _MAX_BIN_WIDTH (HU) when possible.
_MIN_FLOAT_BINS = 1 << 16
_MAX_BIN_WIDTH = 0.25
_SLAB_VOXELS = 1 << 22  # float64 temporaries of ~32 MiB at most

MINMAX_DTYPES = ("float32", "uint8", "uint16")
_MINMAX_SCALE = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}


def as_array(image_or_array) -> np.ndarray:
    """Voxels of a SimpleITK image (a read-only view, z, y, x) or any array-like."""
    if isinstance(image_or_array, sitk.Image):
        return sitk.GetArrayViewFromImage(image_or_array)
    return np.asarray(image_or_array)


def is_integer_array(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_


# ------------------------------------------------------------------------------------- histograms

def integer_counts(array) -> tuple[np.ndarray, int] | None:
    """Exact histogram of integer data: (counts, offset), counts[i] = number of voxels equal to offset + i.

    Returns None for non-integer data or when the value range is too wide to count.
    """
    flat = np.ravel(as_array(array))
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


def histogram(array, bins: int = 256, value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Same result as np.histogram(array, bins, value_range), faster for integer data (counts each value once)."""
    array = as_array(array)
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


# ------------------------------------------------------------------------------------ percentiles

def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation written as numpy's quantile does it (same rounding, so results match bit for bit)."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _order_statistics(cumulative: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Bin holding the k-th smallest value (0-based) for each k: first bin with cumulative > k."""
    return np.searchsorted(cumulative, ranks, side="right")


def quantiles_from_counts(counts: np.ndarray, offset: int, qs) -> np.ndarray:
    """np.quantile(linear) of the multiset of integers described by a histogram (counts, offset)."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    positions = np.asarray(qs, dtype=np.float64) * (n - 1)
    lower = np.floor(positions)
    upper = np.minimum(lower.astype(np.int64) + 1, n - 1)
    v0 = _order_statistics(cumulative, lower.astype(np.int64)).astype(np.float64) + offset
    v1 = _order_statistics(cumulative, upper).astype(np.float64) + offset
    return lerp(v0, v1, positions - lower)


def _estimated_quantiles(flat: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Quantiles of real data from a fine histogram: error below one bin width."""
    lo, hi = float(flat.min()), float(flat.max())  # NaN propagates into both
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError("The image contains NaN or infinite voxels; percentiles are undefined.")
    counts, width = _float_counts(flat, lo, hi)
    cumulative = np.cumsum(counts)
    before = cumulative - counts
    positions = (flat.size - 1) * qs
    lower = np.floor(positions)

    def estimate(ranks):
        bins = _order_statistics(cumulative, ranks)
        # Spread the bin's voxels evenly over the bin: the (r+0.5)/count point of the bin.
        inside = (ranks - before[bins] + 0.5) / counts[bins]
        values = np.clip(lo + (bins + inside) * width, lo, hi)
        # The extremes are known exactly.
        return np.where(ranks == 0, lo, np.where(ranks == flat.size - 1, hi, values))

    ranks = lower.astype(np.int64)
    return lerp(estimate(ranks), estimate(np.minimum(ranks + 1, flat.size - 1)), positions - lower)


def quantiles(image_or_array, qs, exact: bool = False) -> np.ndarray:
    """Quantiles (qs in [0, 1]) with linear interpolation, like np.quantile(method="linear").

    Integer data: exact, from a counting histogram. Real data: exact (a sort) when `exact`, else a
    histogram estimate with an error below one bin (<= 0.25 HU over a CT range, less for narrower ranges).
    """
    qs = np.atleast_1d(np.asarray(qs, dtype=np.float64))
    if np.any(~np.isfinite(qs)) or np.any(qs < 0) or np.any(qs > 1):
        raise InputError(f"Quantiles must lie in [0, 1] (got {qs.tolist()}); e.g. 0.6 and 0.99.")
    array = as_array(image_or_array)
    if array.size == 0:
        raise InputError("No voxel selected to compute percentiles from.")
    counted = integer_counts(array)
    if counted is not None:
        return quantiles_from_counts(*counted, qs)
    if exact:
        return np.quantile(np.asarray(array, dtype=np.float64), qs)
    return _estimated_quantiles(np.ravel(array), qs)


def percentiles(values, ps) -> np.ndarray:
    """np.percentile(values, ps) exactly (ps in [0, 100]), via a counting histogram when values are integers."""
    return quantiles(values, np.asarray(ps, dtype=np.float64) / 100.0, exact=True)


# ---------------------------------------------------------------------------------------- windows

def validate_window(lo: float, hi: float, what: str = "window") -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"The {what} ends must be finite numbers (got [{lo}, {hi}]).")
    if lo >= hi:
        raise InputError(f"The {what} is empty: low end {lo:g} is not below high end {hi:g}.")
    return lo, hi


def check_minmax_dtype(dtype: str) -> str:
    if dtype not in MINMAX_DTYPES:
        raise InputError(f"Unknown output type '{dtype}'; choose one of: {', '.join(MINMAX_DTYPES)}.")
    return dtype


def minmax_array(values, lo: float, hi: float, dtype: str = "uint8") -> np.ndarray:
    """Map [lo, hi] linearly onto 0 .. 255 (uint8), 65535 (uint16) or 1.0 (float32), clipped outside.

    Integer outputs are rounded with np.rint (half to even); computed in float64 so the rounding is
    exact for integer inputs. Used for min-max normalisation and for greyscale previews.
    """
    check_minmax_dtype(dtype)
    scale = _MINMAX_SCALE[dtype]
    t = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo) * scale
    t = np.clip(t, 0.0, scale, out=t if isinstance(t, np.ndarray) else None)  # in place for arrays; scalars too
    if dtype == "float32":
        return t.astype(np.float32)
    return np.rint(t).astype(dtype)


# ---------------------------------------------------------------------------------------- z-score

def mean_std(values) -> tuple[float, float]:
    """Mean and population standard deviation in float64, slab by slab (no full-size float64 copy)."""
    values = np.ravel(as_array(values))
    if values.size == 0:
        raise InputError("No voxel selected to compute a mean and standard deviation from.")
    step = _SLAB_VOXELS
    total = sum(float(np.sum(values[i:i + step], dtype=np.float64)) for i in range(0, values.size, step))
    mean = total / values.size
    squares = sum(
        float(np.sum(np.square(values[i:i + step].astype(np.float64) - mean))) for i in range(0, values.size, step)
    )
    return mean, (squares / values.size) ** 0.5


# MR magnitude images have no negative voxels; a CT in HU (air, fat) or an already normalised image has many.
MR_NEGATIVE_FRACTION_MAX = 0.01


def negative_fraction(array) -> float:
    """Share of voxels below 0."""
    array = np.asarray(array)
    return float(np.count_nonzero(array < 0)) / max(array.size, 1)
