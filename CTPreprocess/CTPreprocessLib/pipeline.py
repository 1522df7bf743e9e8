"""The CT preprocessing chain and its configuration (shared by the CLI, the Slicer Logic and the browser app).

CONTRACT (used by CTPreprocess.py Logic/Widget and the CLI): keep these field names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import SimpleITK as sitk

DENOISE_METHODS = ("none", "curvature_flow", "anisotropic", "median", "gaussian")
WINDOW_MODES = ("none", "preset", "custom", "clip", "percentile")
NORMALIZE_METHODS = ("none", "minmax", "zscore")
DTYPES = ("float32", "uint8", "uint16")
INTERPOLATORS = ("bspline", "linear", "nearest")
CROP_CENTERS = ("center", "mask")


@dataclass
class CTPipelineConfig:
    # denoise
    denoise: str = "none"
    denoise_iterations: int = 5          # curvature flow / anisotropic diffusion
    denoise_time_step: float = 0.0625    # curvature flow / anisotropic diffusion (stable for 3D: <= 0.0625)
    denoise_conductance: float = 3.0     # anisotropic diffusion
    median_radius: int = 1               # voxels
    gaussian_sigma_mm: float = 1.0
    # resample (to a spacing, or onto a reference grid; None = keep the grid)
    spacing: tuple[float, float, float] | None = None
    reference: sitk.Image | None = None
    interpolator: str = "bspline"
    # window / clip
    window_mode: str = "none"
    preset: str | None = None
    level: float | None = None
    width: float | None = None
    clip: tuple[float, float] = (-1350.0, 2000.0)
    quantiles: tuple[float, float] = (0.6, 0.99)
    # normalise
    normalize: str = "none"
    dtype: str = "float32"
    zscore_mask: sitk.Image | None = None
    # crop / pad
    size: tuple[int, int, int] | None = None
    pad_value: float | None = None        # None: the window's low end, else the image minimum
    crop_center: str = "center"
    crop_mask: sitk.Image | None = None
    extras: dict = field(default_factory=dict)
