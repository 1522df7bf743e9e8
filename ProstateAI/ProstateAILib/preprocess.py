"""The model's working grid and intensity normalisation (shared by training and inference).

Working grid: every T2 volume is put in canonical (closest-LPS) axis order, then resampled
(origin and direction kept, extent covered; CTPreprocessLib.resample) to `WORKING_SPACING` = 1.5 x 1.5 x 3.6 mm (x, y, z). Why 1.5 mm in-plane and not the ~0.5 mm
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

from CTPreprocessLib import resample
from MRStandardizeLib.normalize import normalize

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import same_grid

WORKING_SPACING = (1.5, 1.5, 3.6)  # mm, SimpleITK (x, y, z) order
PERCENTILES = (1.0, 99.0)


def metadata(spacing=WORKING_SPACING, percentiles=PERCENTILES, channels=("T2",)) -> dict:
    """Preprocessing description stored in the model file (inference must repeat it)."""
    return {
        "spacing_xyz_mm": [float(s) for s in spacing],
        "grid": "T2 axes permuted/flipped to the closest LPS order (sitk.DICOMOrient), then resampled to the working spacing with origin and direction kept (CTPreprocessLib.resample)",
        "image_interpolator": "bspline",
        "label_interpolator": "label_gaussian",
        "probability_interpolator_back": "linear",
        "normalization": {"method": "percentile", "low": percentiles[0], "high": percentiles[1],
                          "formula": "(I - p_low) / (p_high - p_low), per case and channel, whole volume",
                          "not_normalised": [c for c in channels if is_mask_channel(c)]},
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


def is_mask_channel(name: str) -> bool:
    """Channels named '*_mask' (e.g. the gland mask fed to the zone model) are probabilities in
    [0, 1]: resampled linearly and never intensity-normalised."""
    return str(name).lower().endswith("_mask")


def canonical_orientation(image: sitk.Image) -> sitk.Image:
    """The image with its axes permuted/flipped to the closest LPS orientation (lossless).

    Why: the working grid is built in the image's own axes, so an image stored with permuted or
    flipped axes would otherwise be resampled differently (3.6 mm along the wrong axis).
    PROMISE12 and ProstateX are already (near-)LPS, so this is a no-op for the training data.
    """
    if image.GetDimension() != 3:
        return image
    return sitk.DICOMOrient(image, "LPS")


def working_reference(t2: sitk.Image, spacing=WORKING_SPACING) -> sitk.Image:
    """The T2 in canonical orientation resampled (third-order B-spline) to the working spacing.

    Uses CTPreprocessLib.resample (origin and direction kept, extent covered); an image already
    on the spacing is used as is (no needless interpolation blur).
    """
    t2 = canonical_orientation(sitk.Cast(t2, sitk.sitkFloat32))
    if np.allclose(t2.GetSpacing(), spacing, atol=1e-3):
        return t2
    return resample.resample_to_spacing(t2, spacing, "bspline", default_value=0.0)


def resample_like(image: sitk.Image, reference: sitk.Image, interpolator: str = "linear") -> sitk.Image:
    """`image` on `reference`'s grid (CTPreprocessLib.resample); outside the image -> 0."""
    label = interpolator == "label_gaussian"
    return resample.resample_to_reference(image, reference, interpolator, default_value=0.0, label=label)


def to_working_image(channels: list[sitk.Image], spacing=WORKING_SPACING,
                     channel_names=None) -> tuple[np.ndarray, sitk.Image]:
    """Channels (first = T2, defining the grid) -> float32 array (C, Z, Y, X) + grid image.

    Image channels: B-spline onto the T2 working grid, then percentile normalisation. Mask
    channels (`is_mask_channel`): linear, values kept in [0, 1].
    """
    if not channels:
        raise InputError("No input image given.")
    names = list(channel_names or ["T2"] + [f"channel{i}" for i in range(1, len(channels))])
    reference = working_reference(channels[0], spacing)
    arrays = []
    for index, (channel, name) in enumerate(zip(channels, names)):
        if is_mask_channel(name):
            mask = resample_like(sitk.Cast(channel, sitk.sitkFloat32), reference, "linear")
            arrays.append(np.clip(sitk.GetArrayFromImage(mask), 0.0, 1.0).astype(np.float32))
            continue
        channel = reference if index == 0 else resample_like(sitk.Cast(channel, sitk.sitkFloat32), reference, "bspline")
        arrays.append(normalize_channel(channel))
    return np.stack(arrays).astype(np.float32), reference


def label_to_working(label: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """Mask -> uint8 array (Z, Y, X) on the working grid (Gaussian label interpolation)."""
    label = sitk.Cast(label, sitk.sitkUInt8)
    if same_grid(label, reference):
        return sitk.GetArrayFromImage(label).astype(np.uint8)
    return sitk.GetArrayFromImage(resample_like(label, reference, "label_gaussian")).astype(np.uint8)


def probabilities_to_original(probs: np.ndarray, working: sitk.Image, original: sitk.Image) -> np.ndarray:
    """Class probabilities (K, Z, Y, X) on the working grid -> (K, z, y, x) on the original grid.

    Binary models resample only the foreground (background = 1 - foreground, exact for linear
    interpolation): one resampling instead of two in `segment`.
    """
    if same_grid(working, original):
        return probs
    channels = probs[1:] if probs.shape[0] == 2 else probs
    out = []
    for channel in channels:
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel, dtype=np.float32))
        image.CopyInformation(working)
        out.append(sitk.GetArrayFromImage(resample_like(image, original, "linear")))
    if probs.shape[0] == 2:
        # Outside the working extent linear resampling gives 0: background there is 1 - 0.
        return np.stack([1.0 - out[0], out[0]])
    out = np.stack(out)
    # Outside the working extent linear resampling gives 0 everywhere: call that background.
    outside = out.sum(axis=0) <= 1e-6
    out[0][outside] = 1.0
    return out
