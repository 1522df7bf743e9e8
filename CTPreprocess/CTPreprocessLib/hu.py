"""Loading a CT in Hounsfield units, and checking that an image really is a usable CT.

HU = stored value * RescaleSlope + RescaleIntercept (DICOM 0028,1053 / 0028,1052). SimpleITK (GDCM)
applies the rescale on read, so the voxels we get are already HU; `CTLoadInfo` records what was done
so the user can see it ("Converted stored values to HU with slope 1, intercept -1024").
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.imageio import read_image_with_source, validate_volume
from ProstateAICore.intensity import integer_counts

# An integer image with no negative value and at most this many distinct values is a label map.
# (TotalSegmentator "total" has 117 labels; a real CT in HU has air at about -1000 and thousands of values.)
MAX_LABEL_VALUES = 255
# Below this, a voxel is air or lung; a CT volume without any is suspicious (stored values, or MR).
AIR_HU = -500.0


@dataclass
class CTLoadInfo:
    """What load_ct found out and did, for the GUI, the CLI `info` command and reports."""

    path: str
    kind: str                       # "dicom-series", "dicom-file" or "file"
    modality: str | None
    already_hu: bool                # True when no rescale was applied (values taken as they are)
    rescale_slope: float | None
    rescale_intercept: float | None
    rescale_type: str | None
    message: str
    pixel_type: str
    n_files: int = 1
    padding_value_hu: float | None = None   # DICOM PixelPaddingValue, converted to HU
    padding_voxels: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _rescale_message(slope: float | None, intercept: float | None, kind: str) -> tuple[bool, str]:
    if slope is None and intercept is None:
        where = "DICOM header" if kind.startswith("dicom") else "file"
        return True, f"Input has no rescale tags ({where}); values are taken as HU already."
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    if slope == 1.0 and intercept == 0.0:
        return True, "Rescale slope 1, intercept 0: stored values are HU already."
    return False, f"Converted stored values to HU with slope {slope:g}, intercept {intercept:g}."


def _padding(image: sitk.Image, stored: float | None, slope, intercept) -> tuple[float | None, int]:
    """DICOM PixelPaddingValue (e.g. -2000 outside the circular field of view) in HU, and how many voxels carry it."""
    if stored is None:
        return None, 0
    value = stored * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(image) == value))
    return value, count


def fill_padding(image: sitk.Image, padding_value: float) -> tuple[sitk.Image, int, float | None]:
    """Set voxels equal to `padding_value` (outside the field of view) to the lowest real HU in the image.

    Why: -3024 HU padding would otherwise become the minimum of every percentile, min-max and resample.
    Returns (image, number of voxels filled, fill value); the input image is not modified.
    """
    array = sitk.GetArrayViewFromImage(image)
    padded = array == padding_value
    count = int(np.count_nonzero(padded))
    if count == 0:
        return image, 0, None
    if count == array.size:
        raise InputError(f"Every voxel is padding ({padding_value:g} HU); there is no image inside the field of view.")
    fill = array[~padded].min()
    filled = np.where(padded, fill, array)
    result = sitk.GetImageFromArray(filled)
    result.CopyInformation(image)
    return result, count, float(fill)


def label_map_reason(array: np.ndarray) -> str | None:
    """Why `array` looks like a label map (integer, no negative value, few distinct values), or None."""
    if array.size == 0 or array.min() < 0:
        return None  # real CT in HU has negative air values
    if np.issubdtype(array.dtype, np.floating):
        sample = np.ravel(array)[:: max(1, array.size // 100_000)]
        if not np.array_equal(sample, np.round(sample)):
            return None
        if array.max() > 1 << 16:
            return None
        array = array.astype(np.int32)
    exact = integer_counts(array)
    if exact is None:
        return None
    counts, offset = exact
    values = np.flatnonzero(counts) + offset
    if values.size > MAX_LABEL_VALUES:
        return None
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
    return f"{values.size} distinct non-negative integer values ({shown})"


def looks_like_hu(array: np.ndarray, min_air_fraction: float = 0.01) -> bool:
    """Whether the values look like a CT in HU: at least `min_air_fraction` of the voxels are air
    (below AIR_HU). MR magnitude images have no negative values at all."""
    array = np.asarray(array)
    return array.size > 0 and float(np.count_nonzero(array < AIR_HU)) / array.size >= min_air_fraction


def validate_ct(image: sitk.Image, name: str = "CT image") -> np.ndarray:
    """Reject what cannot be a CT volume: 2D, NaN/Inf, constant, or a label map. Returns a read-only view."""
    array = validate_volume(image, name)
    reason = label_map_reason(array)
    if reason is not None:
        raise InputError(
            f"The {name} looks like a label map or segmentation, not a CT: {reason}. "
            "Pass the CT volume itself (values in HU); masks go in the mask input (--mask on the command line)."
        )
    return array


def _value_warnings(image: sitk.Image) -> list[str]:
    array = sitk.GetArrayViewFromImage(image)
    lo, hi = float(array.min()), float(array.max())
    if lo >= 0 and hi > 1000:
        return [
            f"All values are >= 0 (range {lo:g} .. {hi:g}): these look like stored values, not HU "
            "(HU need a rescale intercept, usually -1024). Windows and presets assume HU."
        ]
    if lo > AIR_HU:
        return [f"No voxel below {AIR_HU:g} HU (minimum {lo:g}): no air in the volume. Is this a CT in HU?"]
    return []


def load_ct(path: str | os.PathLike, series_id: str | None = None, validate: bool = True,
            allow_irregular: bool = False) -> tuple[sitk.Image, CTLoadInfo]:
    """Read a CT (DICOM series folder, single DICOM file, NIfTI, NRRD, MHA) in HU.

    With `validate` (default) the image must be a usable 3D CT: not 2D, finite, not constant, not a
    label map, and DICOM modality CT. `validate=False` only reads (for `prostateai info`).
    `allow_irregular`: a DICOM series with missing/uneven slices is resampled (noted in the warnings).
    """
    image, source = read_image_with_source(path, series_id, allow_irregular)
    kind, modality = source.kind, source.modality
    slope, intercept, rescale_type = source.rescale_slope, source.rescale_intercept, source.rescale_type
    if validate and modality is not None and modality.upper() != "CT":
        hint = " Use MR standardisation for MR images." if modality.upper() == "MR" else ""
        raise InputError(
            f"'{path}' is a DICOM {modality} image, not CT (modality {modality}); CT preprocessing needs a CT "
            f"in Hounsfield units.{hint}"
        )
    already_hu, message = _rescale_message(slope, intercept, kind)
    padding_hu, padding_voxels = _padding(image, source.pixel_padding_value, slope, intercept)
    if padding_voxels:
        message += (
            f" {padding_voxels} voxels ({100.0 * padding_voxels / np.prod(image.GetSize()):.1f} %) are padding "
            f"(PixelPaddingValue, {padding_hu:g} HU) outside the field of view."
        )
    info = CTLoadInfo(
        path=str(path), kind=kind, modality=modality, already_hu=already_hu, rescale_slope=slope,
        rescale_intercept=intercept, rescale_type=rescale_type, message=message,
        pixel_type=image.GetPixelIDTypeAsString(), n_files=source.n_files,
        padding_value_hu=padding_hu, padding_voxels=padding_voxels,
    )
    if validate:
        validate_ct(image)
    if image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 1:
        info.warnings.extend(_value_warnings(image))
    info.warnings.extend(source.notes)
    return image, info
