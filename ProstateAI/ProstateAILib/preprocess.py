"""The model's working grid and intensity normalisation (shared by training and inference).

Working grid: every T2 volume is resampled (in its own orientation, extent-aligned) to
`WORKING_SPACING` = 1.5 x 1.5 x 3.6 mm (x, y, z). Why 1.5 mm in-plane and not the ~0.5 mm
acquisition: a CPU-trainable network needs small volumes; a PROMISE12 mask taken down to 1.5 mm
and back (label-Gaussian / linear) keeps Dice 0.9997 on average, so the grid costs essentially no
accuracy while cutting voxels 2.25x versus 1 mm. 3.6 mm is the typical T2 slice thickness (PROMISE12
nominal spacing, ProstateX ~3-3.6 mm), so z is rarely interpolated much.

Interpolation (Pellicer-Valero 2022): third-order B-spline for images, Gaussian label
interpolation (`sitkLabelGaussian`) for masks, linear for probability maps going back.

Normalisation: per case and per channel, `(I - p1) / (p99 - p1)` over the whole volume, via
`MRStandardizeLib.normalize.normalize(image, "percentile")`. `metadata()` records all of this in the model file so
inference repeats it exactly.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MRStandardizeLib.normalize import normalize

from .errors import InputError

WORKING_SPACING = (1.5, 1.5, 3.6)  # mm, SimpleITK (x, y, z) order
PERCENTILES = (1.0, 99.0)

_INTERPOLATORS = {
    "bspline": sitk.sitkBSpline,
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "label_gaussian": sitk.sitkLabelGaussian,
}


def metadata(spacing=WORKING_SPACING, percentiles=PERCENTILES) -> dict:
    """Preprocessing description stored in the model file (inference must repeat it)."""
    return {
        "spacing_xyz_mm": [float(s) for s in spacing],
        "grid": "image's own direction; extent-aligned resample to the working spacing",
        "image_interpolator": "bspline",
        "label_interpolator": "label_gaussian",
        "probability_interpolator_back": "linear",
        "normalization": {"method": "percentile", "low": percentiles[0], "high": percentiles[1],
                          "formula": "(I - p_low) / (p_high - p_low), per case and channel, whole volume"},
        "array_order": "(channel, z, y, x)",
    }


def normalize_channel(image: sitk.Image, low: float = PERCENTILES[0], high: float = PERCENTILES[1]) -> np.ndarray:
    """Per-case percentile normalisation of one channel -> float32 array (z, y, x).

    Uses MRStandardizeLib.normalize (the issue asks preprocessing to reuse the MRStandardize Lib).
    A constant channel (a missing sequence filled with zeros) becomes all zeros instead of an error.
    """
    array = sitk.GetArrayViewFromImage(image)
    if array.size == 0 or array.min() == array.max():
        return np.zeros(array.shape, np.float32)
    out = normalize(image, "percentile", low_percentile=low, high_percentile=high)
    return sitk.GetArrayFromImage(out).astype(np.float32, copy=False)


def resample_to_spacing(image: sitk.Image, spacing=WORKING_SPACING, interpolator: str = "bspline") -> sitk.Image:
    """Resample onto a grid with `spacing` covering the same physical extent, same direction.

    Images already on the spacing (within 1e-3 mm) are returned unchanged, so no interpolation
    blur is added needlessly.
    """
    old_spacing = np.array(image.GetSpacing(), dtype=float)
    new_spacing = np.array(spacing, dtype=float)
    if np.allclose(old_spacing, new_spacing, atol=1e-3):
        return image
    old_size = np.array(image.GetSize(), dtype=float)
    new_size = np.maximum(1, np.round(old_size * old_spacing / new_spacing)).astype(int)
    # Keep the grid centred on the old extent: shift the first voxel centre by half the change.
    direction = np.array(image.GetDirection()).reshape(3, 3)
    extent_change = new_size * new_spacing - old_size * old_spacing
    origin = (
        np.array(image.GetOrigin())
        + direction @ ((new_spacing - old_spacing) / 2.0)
        - direction @ (extent_change / 2.0)
    )
    pixel = sitk.sitkFloat32 if interpolator in ("bspline", "linear") else image.GetPixelID()
    return sitk.Resample(
        image, [int(s) for s in new_size], sitk.Transform(), _INTERPOLATORS[interpolator],
        [float(o) for o in origin], [float(s) for s in new_spacing], image.GetDirection(), 0.0, pixel,
    )


def resample_like(image: sitk.Image, reference: sitk.Image, interpolator: str = "linear") -> sitk.Image:
    """Resample `image` onto `reference`'s grid (used to bring probabilities back)."""
    pixel = sitk.sitkFloat32 if interpolator in ("bspline", "linear") else image.GetPixelID()
    return sitk.Resample(image, reference, sitk.Transform(), _INTERPOLATORS[interpolator], 0.0, pixel)


def to_working_image(channels: list[sitk.Image], spacing=WORKING_SPACING) -> tuple[np.ndarray, sitk.Image]:
    """Channels (first = T2, defining the grid) -> normalised float32 array (C, Z, Y, X) + grid image.

    Other channels are resampled onto the T2 working grid (B-spline) before normalisation.
    """
    if not channels:
        raise InputError("No input image given.")
    reference = resample_to_spacing(sitk.Cast(channels[0], sitk.sitkFloat32), spacing, "bspline")
    arrays = []
    for index, channel in enumerate(channels):
        channel = sitk.Cast(channel, sitk.sitkFloat32)
        if index > 0:
            channel = resample_like(channel, reference, "bspline")
        else:
            channel = reference
        arrays.append(normalize_channel(channel))
    return np.stack(arrays).astype(np.float32), reference


def label_to_working(label: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Mask -> uint8 array (Z, Y, X) on the working grid (Gaussian label interpolation)."""
    label = sitk.Cast(label, sitk.sitkUInt8)
    if label.GetSize() == reference.GetSize() and np.allclose(label.GetSpacing(), reference.GetSpacing(), atol=1e-3) \
            and np.allclose(label.GetOrigin(), reference.GetOrigin(), atol=1e-3):
        return sitk.GetArrayFromImage(label).astype(np.uint8)
    return sitk.GetArrayFromImage(resample_like(label, reference, "label_gaussian")).astype(np.uint8)


def probabilities_to_original(probs: np.ndarray, working: sitk.Image, original: sitk.Image) -> np.ndarray:
    """Class probabilities (K, Z, Y, X) on the working grid -> (K, z, y, x) on the original grid."""
    if working.GetSize() == original.GetSize() and np.allclose(working.GetSpacing(), original.GetSpacing(), atol=1e-3):
        return probs
    out = []
    for channel in probs:
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel, dtype=np.float32))
        image.CopyInformation(working)
        out.append(sitk.GetArrayFromImage(resample_like(image, original, "linear")))
    out = np.stack(out)
    # Outside the working extent linear resampling gives 0 everywhere: call that background.
    outside = out.sum(axis=0) <= 1e-6
    out[0][outside] = 1.0
    return out
