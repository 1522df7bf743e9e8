"""MRML glue shared by the three modules' Logic classes (needs `slicer`, no Qt).

Converts between volume nodes and SimpleITK images exactly: MRML stores geometry as an IJK→RAS
matrix, ITK as origin/spacing/direction in LPS. The Lib packages only ever see SimpleITK images.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 IJK→RAS matrix of a SimpleITK image."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def image_from_volume_node(node) -> sitk.Image:
    """A SimpleITK copy of a scalar volume node's voxels and geometry (LPS)."""
    array = slicer.util.arrayFromVolume(node)
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    vmatrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vmatrix)
    matrix = slicer.util.arrayFromVTKMatrix(vmatrix)
    axes = LPS_TO_RAS @ matrix[:3, :3]  # LPS direction * spacing (RAS→LPS is its own inverse)
    spacing = np.linalg.norm(axes, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((axes / spacing).flatten().tolist())
    image.SetOrigin((LPS_TO_RAS @ matrix[:3, 3]).tolist())
    return image


def update_volume_node_from_image(node, image: sitk.Image) -> None:
    """Write voxels and geometry of `image` into an existing volume node."""
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_matrix(image)))
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))


def add_volume_node(scene, image: sitk.Image, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    """Add a new volume node holding `image` (with a display node) to `scene`."""
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def describe_volume(volume_node) -> str:
    """One line with the voxel grid of a volume node ("" when there is none)."""
    if volume_node is None or volume_node.GetImageData() is None:
        return ""
    dims = volume_node.GetImageData().GetDimensions()
    spacing = volume_node.GetSpacing()
    return f"{dims[0]} x {dims[1]} x {dims[2]} voxels, spacing {spacing[0]:.3g} x {spacing[1]:.3g} x {spacing[2]:.3g} mm"
