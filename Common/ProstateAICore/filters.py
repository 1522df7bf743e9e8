"""Running SimpleITK filters the same way everywhere: progress forwarded, one real pixel type."""

from __future__ import annotations

import SimpleITK as sitk

from .progress import ProgressFn, observe_filter


def stable_time_step(image: sitk.Image, requested: float | None = None) -> float:
    """The explicit diffusion time step ITK accepts as stable: min spacing / 2^(dimension + 1).

    Why: ITK only prints a warning for a larger step (e.g. the usual 0.0625 on a 0.57 mm CT) and
    the result then blows up. `requested` is clamped to the limit; None gives the limit itself.
    """
    limit = min(image.GetSpacing()) / 2.0 ** (image.GetDimension() + 1)
    return limit if requested is None else min(float(requested), limit)


def run_float32(sitk_filter: sitk.ProcessObject, image: sitk.Image, progress: ProgressFn | None = None,
                message: str = "") -> sitk.Image:
    """Execute a smoothing filter on `image` as float32 and answer in float32 (some ITK filters,
    curvature flow among them, answer in float64); the filter's progress goes to `progress`."""
    observe_filter(sitk_filter, progress, message)
    return sitk.Cast(sitk_filter.Execute(sitk.Cast(image, sitk.sitkFloat32)), sitk.sitkFloat32)
