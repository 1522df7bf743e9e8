"""PNG previews: a windowed slice in radiological display orientation, and an intensity histogram.

Radiological convention: axial and coronal views show the patient's right on the image's left;
axial has anterior up, coronal and sagittal have superior up, sagittal has anterior on the left.
The volume is first reoriented to LPS (index i -> patient left, j -> posterior, k -> superior), so the
file's direction matrix (RAS-stored NIfTI, flipped masks...) cannot flip the picture.
Matplotlib's Agg canvas is used directly (no pyplot): safe off the GUI thread and without a display.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import InputError
from .imageio import atomic_path

from .intensity import histogram, minmax_array, validate_window

AXES = ("axial", "coronal", "sagittal")
# Letters at the left/right and top/bottom edges of each view.
EDGE_LABELS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def to_lps(image: sitk.Image) -> sitk.Image:
    """Same voxels, index axes along patient L, P, S (identity direction for axis-aligned scans)."""
    return sitk.DICOMOrient(image, "LPS")


def lps_spacing(image: sitk.Image) -> tuple[float, float, float]:
    """Spacing along the L, P, S index axes of to_lps(image), without reorienting the voxels."""
    direction = np.abs(np.array(image.GetDirection()).reshape(3, 3))  # columns: image axes in LPS space
    return tuple(float(image.GetSpacing()[int(np.argmax(direction[row]))]) for row in range(3))


def display_slice(image: sitk.Image, axis: str = "axial", index: int | None = None) -> tuple[np.ndarray, float, int]:
    """(2D array in display orientation, pixel aspect height/width, slice index used).

    `index` counts along the LPS-reoriented axis: axial from inferior, coronal from anterior,
    sagittal from the patient's right; None = the middle slice.
    """
    if axis not in AXES:
        raise InputError(f"Unknown view '{axis}'; choose one of: {', '.join(AXES)}.")
    if image.GetDimension() != 3:
        raise InputError(f"A 3D image is needed for slice previews (got {image.GetDimension()}D).")
    lps = to_lps(image)
    volume = sitk.GetArrayViewFromImage(lps)  # (k: S, j: P, i: L); a view, valid while `lps` lives
    sx, sy, sz = lps.GetSpacing()
    depth = {"axial": volume.shape[0], "coronal": volume.shape[1], "sagittal": volume.shape[2]}[axis]
    index = depth // 2 if index is None else int(index)
    if not 0 <= index < depth:
        raise InputError(f"Slice index {index} is outside the {axis} range 0 .. {depth - 1}.")
    if axis == "axial":
        # rows j: anterior (j=0) at the top; columns i: patient's right (i=0) on the left.
        plane, aspect = volume[index], sy / sx
    elif axis == "coronal":
        # rows k reversed so superior is up; columns i as in axial.
        plane, aspect = volume[::-1, index, :], sz / sx
    else:
        # sagittal: rows k reversed (superior up), columns j: anterior (j=0) on the left.
        plane, aspect = volume[::-1, :, index], sz / sy
    return np.array(plane), aspect, index  # copy before `lps` (which owns the memory) goes away


def draw_edge_letters(ax, axis: str = "axial", fontsize: int = 11) -> None:
    """Patient-direction letters (EDGE_LABELS) at the four edges of a view drawn by display_slice."""
    left, right, top, bottom = EDGE_LABELS[axis]
    style = {"color": "yellow", "fontsize": fontsize, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)


def black_figure(width_px: int, height_px: int, dpi: int = 100) -> Figure:
    """A black Agg figure of the given pixel size (the slice-preview style)."""
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> str:
    """Write the figure as PNG atomically, keeping its background colour."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi, facecolor=fig.get_facecolor())
    return str(path)


def save_slice_png(image: sitk.Image, path: str | os.PathLike, lo: float, hi: float, axis: str = "axial",
                   index: int | None = None, title: str | None = None, width_px: int = 512) -> str:
    """Write an 8-bit grey PNG of one slice, window [lo, hi] mapped to black..white, with R/L/A/P letters."""
    lo, hi = validate_window(lo, hi)
    plane, aspect, index = display_slice(image, axis, index)
    grey = minmax_array(plane, lo, hi, "uint8")
    rows, cols = grey.shape
    image_height = max(1, int(round(width_px * rows * aspect / cols)))
    title_px = 28 if title else 0
    fig = black_figure(width_px, image_height + title_px)
    ax = fig.add_axes((0, 0, 1, image_height / (image_height + title_px)))
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    draw_edge_letters(ax, axis)
    if title:
        fig.text(0.5, 1 - 0.5 * title_px / (image_height + title_px), f"{title}  [{axis} {index}]",
                 ha="center", va="center", color="white", fontsize=10)
    return save_png(fig, path)


def save_histogram_png(array, path: str | os.PathLike, window: tuple[float, float] | None = None,
                       bins: int = 256, title: str | None = None) -> str:
    """Histogram (log counts) of an image or array, with the window shaded and its ends marked."""
    counts, edges = histogram(array, bins=bins)  # accepts a sitk.Image too
    fig = Figure(figsize=(7, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.stairs(np.maximum(counts, 0.8), edges, fill=True, color="0.35", baseline=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("intensity (HU)")
    ax.set_ylabel("voxels")
    if window is not None:
        lo, hi = validate_window(*window)
        ax.axvspan(lo, hi, color="tab:orange", alpha=0.2, label=f"window [{lo:g}, {hi:g}]")
        for end in (lo, hi):
            ax.axvline(end, color="tab:orange", linewidth=1.5)
        ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)
