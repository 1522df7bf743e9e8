"""Draw the 128 x 128 module and extension icons (matplotlib, no external art).

Run from the repository root: `.venv/bin/python Utilities/make_icons.py`. The PNGs are committed;
rerun only to change the artwork.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Ellipse, FancyBboxPatch, PathPatch, Rectangle  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 128


def _canvas():
    fig = plt.figure(figsize=(SIZE / 100, SIZE / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, SIZE)
    ax.set_ylim(0, SIZE)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _tile(ax, color):
    ax.add_patch(
        FancyBboxPatch((6, 6), SIZE - 12, SIZE - 12, boxstyle="round,pad=0,rounding_size=18",
                       facecolor=color, edgecolor="none")
    )


def _save(fig, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, transparent=True)
    plt.close(fig)
    print("wrote", path.relative_to(REPO))


def ct_icon(path: Path):
    """An axial CT slice (body, lungs, spine) above a grey-level bar with the window marked."""
    fig, ax = _canvas()
    _tile(ax, "#1d2733")
    ax.add_patch(Ellipse((64, 76), 96, 66, facecolor="#8f8f8f", edgecolor="#d8d8d8", lw=2))
    ax.add_patch(Ellipse((42, 80), 30, 40, facecolor="#262626", edgecolor="none"))
    ax.add_patch(Ellipse((86, 80), 30, 40, facecolor="#262626", edgecolor="none"))
    ax.add_patch(Ellipse((64, 84), 14, 18, facecolor="#b5b5b5", edgecolor="none"))  # mediastinum
    ax.add_patch(Ellipse((64, 52), 14, 12, facecolor="#f4f4f4", edgecolor="none"))  # vertebra
    gradient = np.linspace(0, 1, 256)[None, :]
    ax.imshow(gradient, cmap="gray", extent=(16, 112, 18, 32), aspect="auto", zorder=2)
    ax.add_patch(Rectangle((44, 14), 40, 22, facecolor="none", edgecolor="#ff9f1c", lw=3, zorder=3))
    _save(fig, path)


def mr_icon(path: Path):
    """An MR intensity histogram with standardisation landmarks."""
    fig, ax = _canvas()
    _tile(ax, "#1b2a3f")
    x = np.linspace(0, 1, 14)
    heights = 8 + 70 * (0.75 * np.exp(-((x - 0.28) / 0.12) ** 2) + 0.55 * np.exp(-((x - 0.68) / 0.16) ** 2))
    width = 96 / len(x)
    for i, h in enumerate(heights):
        ax.add_patch(Rectangle((16 + i * width, 22), width - 1.5, h, facecolor="#39c0ba", edgecolor="none"))
    for xm in (0.1, 0.5, 0.9):
        ax.plot([16 + xm * 96] * 2, [20, 110], color="#ffd166", lw=2.5, solid_capstyle="round")
    ax.plot([14, 114], [21, 21], color="#e0e6ef", lw=2)
    _save(fig, path)


def _prostate_path(cx, cy, s):
    """A walnut-shaped gland outline (wider at the base, rounded apex), centred at (cx, cy)."""
    t = np.linspace(0, 2 * np.pi, 200)
    x = np.sin(t) * (1.0 + 0.12 * np.cos(t))
    y = 0.82 * np.cos(t) - 0.10 * np.cos(2 * t)
    verts = np.column_stack([cx + s * x, cy + s * y])
    return MplPath(verts, closed=True)


def prostate_icon(path: Path, with_text: bool = False):
    """Prostate outline with the central gland and a lesion, on an MR-grey tile."""
    fig, ax = _canvas()
    _tile(ax, "#2b2b36")
    cy = 70 if with_text else 64
    ax.add_patch(PathPatch(_prostate_path(64, cy, 44), facecolor="#c2185b", alpha=0.35, edgecolor="#ff4f8b", lw=3.5))
    ax.add_patch(Ellipse((64, cy + 8), 46, 30, facecolor="#7b1fa2", alpha=0.55, edgecolor="#e1bee7", lw=2))
    ax.add_patch(Ellipse((82, cy - 18), 14, 12, facecolor="#ffca28", edgecolor="#fff3c4", lw=1.5))
    if with_text:
        ax.text(64, 14, "ProstateAI", ha="center", va="bottom", color="white", fontsize=11, fontweight="bold")
    _save(fig, path)


def main():
    ct_icon(REPO / "CTPreprocess/Resources/Icons/CTPreprocess.png")
    mr_icon(REPO / "MRStandardize/Resources/Icons/MRStandardize.png")
    prostate_icon(REPO / "ProstateAI/Resources/Icons/ProstateAI.png")
    prostate_icon(REPO / "Resources/Icons/ProstateAI-extension.png", with_text=True)


if __name__ == "__main__":
    main()
