"""Image geometry: grids, LPS (ITK/DICOM) <-> RAS (Slicer/MRML) and arrays placed on a reference grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import InputError


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-3) -> bool:
    """True when two images share size and (within `tolerance`) spacing, origin and direction.

    A tolerance is needed: NIfTI stores geometry as float32, so masks written from a DICOM image
    differ from it by ~1e-6 mm in origin and up to ~2e-4 in direction.
    """
    if a.GetSize() != b.GetSize():
        return False
    return (
        np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def require_same_grid(image: sitk.Image, mask: sitk.Image, names=("image", "mask")) -> sitk.Image:
    """Return `mask` with the image's exact geometry, or raise when the grids really differ."""
    if not same_grid(image, mask):
        raise InputError(
            f"The {names[1]} is not on the {names[0]}'s grid ({names[1]} size {mask.GetSize()}, spacing "
            f"{tuple(round(s, 4) for s in mask.GetSpacing())}; {names[0]} size {image.GetSize()}, spacing "
            f"{tuple(round(s, 4) for s in image.GetSpacing())}). Resample it onto the {names[0]} first."
        )
    aligned = sitk.Image(mask)
    aligned.CopyInformation(image)
    return aligned


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # ITK/DICOM patient axes -> Slicer/MRML world axes (its own inverse)


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 IJK->RAS matrix of a SimpleITK image (what MRML volume nodes and .seg.nrrd geometry use)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def geometry(image: sitk.Image) -> dict:
    return {
        "size": list(image.GetSize()),
        "spacing": [float(s) for s in image.GetSpacing()],
        "origin": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
    }


def image_like(array: np.ndarray, reference: sitk.Image, dtype=np.float32) -> sitk.Image:
    """An image of `array` (z, y, x) as `dtype` with `reference`'s geometry (origin, spacing, direction)."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=dtype))
    out.CopyInformation(reference)
    return out
