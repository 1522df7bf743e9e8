"""Resampling to a new spacing or onto a reference grid.

Images: third-order B-spline (default), linear or nearest. Label maps: nearest or Gaussian label
interpolation (sitkLabelGaussian, smoother boundaries). Interpolated images come out float32 (B-spline
over- and undershoots, so an integer type would clip or round); nearest / label keep the pixel type.
Voxels falling outside the input get the image minimum (air for a CT, not 0 HU) unless told otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.progress import ProgressFn, observe_filter

IMAGE_INTERPOLATORS = {
    "bspline": sitk.sitkBSpline3,
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
}
LABEL_INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "label_gaussian": sitk.sitkLabelGaussian,
}
INTERPOLATORS = ("bspline", "linear", "nearest", "label_gaussian")


def _interpolator(name: str | None, label: bool) -> tuple[int, str]:
    table = LABEL_INTERPOLATORS if label else IMAGE_INTERPOLATORS
    name = name or ("nearest" if label else "bspline")
    if name not in table:
        what = "label maps" if label else "images"
        raise InputError(f"Interpolator '{name}' is not available for {what}; choose one of: {', '.join(table)}.")
    return table[name], name


def check_spacing(spacing, dimension: int) -> tuple[float, ...]:
    if np.isscalar(spacing):
        spacing = (spacing,) * dimension
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != dimension or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"Spacing must be {dimension} positive numbers in mm (got {spacing}).")
    return spacing


def output_size(image: sitk.Image, spacing) -> tuple[int, ...]:
    """Voxels needed to cover the input's extent (size * spacing) at the new spacing."""
    # The 1e-6 guard keeps 512 * 0.5703125 / 0.5703125 from becoming 513 through float error.
    return tuple(
        max(1, math.ceil(n * old / new - 1e-6)) for n, old, new in zip(image.GetSize(), image.GetSpacing(), spacing)
    )


def _default_value(image: sitk.Image, default_value: float | None, label: bool) -> float:
    if default_value is not None:
        return float(default_value)
    return 0.0 if label else float(sitk.GetArrayViewFromImage(image).min())


def _resample(image, size, spacing, origin, direction, interpolator, default, pixel_type, progress) -> sitk.Image:
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in size])
    f.SetOutputSpacing(spacing)
    f.SetOutputOrigin(origin)
    f.SetOutputDirection(direction)
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(default)
    f.SetOutputPixelType(pixel_type)
    observe_filter(f, progress, "Resampling")
    return f.Execute(image)


def _pixel_type(image: sitk.Image, name: str, label: bool) -> int:
    return image.GetPixelID() if (label or name == "nearest") else sitk.sitkFloat32


def resample_to_spacing(image: sitk.Image, spacing, interpolator: str | None = None,
                        default_value: float | None = None, label: bool = False,
                        progress: ProgressFn | None = None) -> sitk.Image:
    """Resample to `spacing` (mm, x y z or one number); origin and direction kept.

    interpolator: "bspline" (default for images), "linear", "nearest"; for label=True "nearest"
    (default) or "label_gaussian". Output size = ceil(extent / spacing), so the input extent is covered.
    """
    spacing = check_spacing(spacing, image.GetDimension())
    method, name = _interpolator(interpolator, label)
    return _resample(
        image, output_size(image, spacing), spacing, image.GetOrigin(), image.GetDirection(), method,
        _default_value(image, default_value, label), _pixel_type(image, name, label), progress,
    )


def resample_to_reference(image: sitk.Image, reference: sitk.Image, interpolator: str | None = None,
                          default_value: float | None = None, label: bool = False,
                          progress: ProgressFn | None = None) -> sitk.Image:
    """Resample onto the reference's grid (size, spacing, origin, direction), in physical space."""
    if reference.GetDimension() != image.GetDimension():
        raise InputError(
            f"The reference is {reference.GetDimension()}D and the image {image.GetDimension()}D; they must match."
        )
    method, name = _interpolator(interpolator, label)
    return _resample(
        image, reference.GetSize(), reference.GetSpacing(), reference.GetOrigin(), reference.GetDirection(), method,
        _default_value(image, default_value, label), _pixel_type(image, name, label), progress,
    )
