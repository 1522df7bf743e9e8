"""The registration's visual check: checkerboards, blends and the before/after PNG (numpy, matplotlib Agg).

Both images are put on the fixed grid and percentile-normalised to [0, 1] so that a T2 and an ADC
can be compared by eye; slices are shown in radiological convention (anterior up, patient left on
the right), zoomed onto the gland when a mask is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import require_same_grid, same_grid
from ProstateAICore.imageio import atomic_path

from .registration import resample_onto


def normalize_percentile(image: sitk.Image, low: float = 1.0, high: float = 99.0) -> sitk.Image:
    """(I − p_low) / (p_high − p_low) clipped to [0, 1], percentiles of the non-zero voxels (float32)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    values = array[array != 0]
    if values.size == 0:
        values = array.ravel()
    lo, hi = np.percentile(values, [low, high])
    scaled = np.clip((array - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(array)
    out = sitk.GetImageFromArray(scaled.astype(np.float32))
    out.CopyInformation(image)
    return out


def _comparable_pair(fixed: sitk.Image, other: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """Both on the fixed grid (identity resampling when needed) and percentile-normalised."""
    if not same_grid(fixed, other):
        other = resample_onto(fixed, other)
    else:
        other = sitk.Image(other)
        other.CopyInformation(fixed)
    return normalize_percentile(fixed), normalize_percentile(other)


def checkerboard(fixed: sitk.Image, resampled: sitk.Image, pattern=(8, 8, 1)) -> sitk.Image:
    """Checkerboard of the two percentile-normalised images (fixed grid, float32 in [0, 1])."""
    a, b = _comparable_pair(fixed, resampled)
    return sitk.CheckerBoard(a, b, [int(p) for p in pattern])


def blend(fixed: sitk.Image, resampled: sitk.Image, alpha: float = 0.5) -> sitk.Image:
    """(1 − alpha)·fixed + alpha·moving, both percentile-normalised (fixed grid, float32)."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1] (got {alpha}).")
    a, b = _comparable_pair(fixed, resampled)
    return sitk.Cast((1.0 - alpha) * a + alpha * b, sitk.sitkFloat32)


def _display_slice(image: sitk.Image, z: int) -> np.ndarray:
    """Axial slice z of an LPS-oriented image as (rows=y, cols=x): anterior up, patient left on the right."""
    return sitk.GetArrayFromImage(image)[z]


def _check_slice(fixed: sitk.Image, mask: sitk.Image | None) -> int:
    if mask is None:
        return fixed.GetSize()[2] // 2
    z = np.nonzero(sitk.GetArrayViewFromImage(mask).reshape(fixed.GetSize()[2], -1).any(axis=1))[0]
    return int(z[len(z) // 2]) if z.size else fixed.GetSize()[2] // 2


def _crop_window(mask_slice: np.ndarray | None, shape, spacing, margin_mm=30.0):
    """Row/column window around the gland (margin in mm), or the whole slice without a mask."""
    if mask_slice is None or not mask_slice.any():
        return slice(0, shape[0]), slice(0, shape[1])
    rows, cols = np.nonzero(mask_slice)
    pr, pc = int(margin_mm / spacing[1]), int(margin_mm / spacing[0])
    return (
        slice(max(0, rows.min() - pr), min(shape[0], rows.max() + pr + 1)),
        slice(max(0, cols.min() - pc), min(shape[1], cols.max() + pc + 1)),
    )


def _checker_2d(a: np.ndarray, b: np.ndarray, pattern) -> np.ndarray:
    """2D checkerboard of two same-shape slices with pattern[0] × pattern[1] squares (x × y)."""
    rows = np.arange(a.shape[0]) * int(pattern[1]) // a.shape[0]
    cols = np.arange(a.shape[1]) * int(pattern[0]) // a.shape[1]
    use_b = (rows[:, None] + cols[None, :]) % 2 == 1
    return np.where(use_b, b, a)


def _green_magenta(fixed_slice: np.ndarray, moving_slice: np.ndarray) -> np.ndarray:
    """Fixed in green, moving in magenta: aligned structures look grey, misaligned ones coloured."""
    return np.clip(np.stack([moving_slice, fixed_slice, moving_slice], axis=-1), 0.0, 1.0)


def save_check_png(fixed, moving_before, moving_after, path, mask=None, pattern=(8, 8, 1), title=None) -> Path:
    """PNG: before/after checkerboards and green/magenta overlays on the middle gland slice.

    `moving_before`: the moving image as acquired (any grid; resampled with identity) or already on
    the fixed grid; `moving_after`: the registration's `resampled`. `mask` (fixed grid) picks the
    slice, zooms onto the gland (±30 mm) and is drawn in yellow; the checkerboard has
    pattern[0] × pattern[1] squares over the shown window. Images are reoriented to LPS so the slice
    shows in radiological convention (anterior up, patient left on the right).
    """
    # Figure + Agg canvas, not pyplot: no global backend state (safe inside Slicer's Qt process).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fixed_n, before_n = _comparable_pair(fixed, moving_before)
    _, after_n = _comparable_pair(fixed, moving_after)
    fixed_n, before_n, after_n = (sitk.DICOMOrient(im, "LPS") for im in (fixed_n, before_n, after_n))
    mask_lps = None
    if mask is not None:
        mask_lps = sitk.DICOMOrient(require_same_grid(fixed, mask, ("fixed image", "mask")), "LPS")
    z = _check_slice(fixed_n, mask_lps)
    mask_slice = _display_slice(mask_lps, z) > 0 if mask_lps is not None else None
    window = _crop_window(mask_slice, fixed_n.GetSize()[1::-1], fixed_n.GetSpacing())
    f, b, a = (_display_slice(im, z)[window] for im in (fixed_n, before_n, after_n))
    panels = [
        ("checkerboard before (T2 | moving)", _checker_2d(f, b, pattern)),
        ("checkerboard after", _checker_2d(f, a, pattern)),
        ("before: fixed green, moving magenta", _green_magenta(f, b)),
        ("after: fixed green, moving magenta", _green_magenta(f, a)),
    ]
    spacing = fixed_n.GetSpacing()
    aspect = spacing[1] / spacing[0]
    figure = Figure(figsize=(10, 10 * aspect * f.shape[0] / f.shape[1] + 0.8))
    FigureCanvasAgg(figure)
    for ax, (name, picture) in zip(figure.subplots(2, 2).ravel(), panels):
        ax.imshow(picture, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        if mask_slice is not None:
            ax.contour(mask_slice[window], levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    figure.suptitle(title or f"slice z={z} (anterior up, patient left on the right)", fontsize=11)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", dpi=100)
    return Path(path)
