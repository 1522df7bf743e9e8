"""CT windows: organ presets, level/width arithmetic, percentile windows, clipping.

A window is a pair (lo, hi) in HU; a preset is a pair (level WL, width WW) with
window = [WL - WW/2, WL + WW/2] (values: ../shared/METHODS.md, corrected table).
Percentiles and histograms come from the shared core (`ProstateAICore.intensity`: exact for integer CT).
"""

from __future__ import annotations

import math

import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.intensity import quantiles, validate_window

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


def apply_window(image: sitk.Image, lo: float, hi: float) -> sitk.Image:
    """Clip to [lo, hi]; float32 out (window ends need not be integers), geometry kept."""
    lo, hi = validate_window(lo, hi)
    return sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, lo, hi)
