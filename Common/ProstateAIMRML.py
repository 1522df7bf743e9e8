"""MRML glue shared by the three modules' Logic classes (needs `slicer`, no Qt; imports only ProstateAICore).

Converts between volume nodes and SimpleITK images exactly: MRML stores geometry as an IJK→RAS
matrix, ITK as origin/spacing/direction in LPS. The Lib packages only ever see SimpleITK images.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import LPS_TO_RAS, ijk_to_ras_matrix, require_same_grid
from ProstateAICore.terminology import terminology_entry


def _geometry_from_node(image: sitk.Image, node) -> sitk.Image:
    """`image` with the volume node's IJK→RAS geometry as LPS spacing, direction and origin."""
    vmatrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vmatrix)
    matrix = slicer.util.arrayFromVTKMatrix(vmatrix)
    axes = LPS_TO_RAS @ matrix[:3, :3]  # LPS direction * spacing (RAS→LPS is its own inverse)
    spacing = np.linalg.norm(axes, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((axes / spacing).flatten().tolist())
    image.SetOrigin((LPS_TO_RAS @ matrix[:3, 3]).tolist())
    return image


def image_from_volume_node(node) -> sitk.Image:
    """A SimpleITK copy of a scalar volume node's voxels and geometry (LPS)."""
    array = slicer.util.arrayFromVolume(node)
    return _geometry_from_node(sitk.GetImageFromArray(np.array(array, copy=True)), node)


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


def helper_node(scene, class_name: str, attribute: str, role: str, name: str, hidden: bool = False):
    """A module's helper node (plot, table...) tagged `attribute` = `role`: one per scene, created when missing.

    Tagging by role (not by name) finds the node again after the user renames it or reloads the scene.
    `hidden` keeps a new node out of the node selectors (SetHideFromEditors).
    """
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetAttribute(attribute) == role:
            return node
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAttribute(attribute, role)
    if hidden:
        node.SetHideFromEditors(True)
    return node


def describe_volume(volume_node) -> str:
    """One line with the voxel grid of a volume node ("" when there is none)."""
    if volume_node is None or volume_node.GetImageData() is None:
        return ""
    dims = volume_node.GetImageData().GetDimensions()
    spacing = volume_node.GetSpacing()
    return f"{dims[0]} x {dims[1]} x {dims[2]} voxels, spacing {spacing[0]:.3g} x {spacing[1]:.3g} x {spacing[2]:.3g} mm"


# ------------------------------------------------------------------------------------ segmentations

def _ijk_to_ras(node) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix


def _mask_array(mask, value: int, reference_node, label: str) -> np.ndarray:
    """(z, y, x) uint8 0/1 array of `mask == value`; `mask` is a SimpleITK image or an array on the reference grid."""
    dims = reference_node.GetImageData().GetDimensions()  # (x, y, z)
    if isinstance(mask, sitk.Image):
        if mask.GetDimension() != 3:
            raise InputError(f"Label image for '{label}' is {mask.GetDimension()}D; a 3D label image is needed.")
        # The reference's grid only (no voxel copy); same_grid's tolerance absorbs NIfTI/float round trips.
        grid = _geometry_from_node(sitk.Image([int(d) for d in dims], sitk.sitkUInt8), reference_node)
        mask = require_same_grid(grid, mask, ("reference volume", f"label image for '{label}'"))
        array = sitk.GetArrayViewFromImage(mask)
    else:
        array = np.asarray(mask)
        if array.shape != tuple(dims[::-1]):
            raise InputError(f"Label array for '{label}' has shape {array.shape}, the reference volume "
                             f"{tuple(dims[::-1])} (z, y, x).")
    return np.ascontiguousarray(array == value, dtype=np.uint8)


def _oriented_image(array: np.ndarray, reference_node):
    """A vtkOrientedImageData holding `array` (z, y, x) with the reference node's exact IJK→RAS geometry."""
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.SetImageToWorldMatrix(_ijk_to_ras(reference_node))
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def add_segmentation_node(scene, reference_node, label_images: dict, segments, name: str = "Segmentation"):
    """A new vtkMRMLSegmentationNode with one named, coloured segment per entry of `segments`.

    `label_images` maps a layer name to a label image on the reference volume's grid (a SimpleITK
    image or a (z, y, x) array); `segments` lists (name, layer, label value, colour RGB 0-1[, (SNOMED
    code, meaning)]), e.g. `ProstateAILib.pipeline.SEGMENTS` (Prostate, PZ, TZ). Each segment
    is imported as its own binary mask on the reference node's exact IJK→RAS grid (the reference
    geometry is set first), so exporting it on the reference volume gives back the input voxels;
    names and colours come from `segments`, never from a default colour table.
    """
    if reference_node is None or reference_node.GetImageData() is None:
        raise InputError("A reference volume with voxels is needed.")
    masks = []
    for entry in segments:
        segment_name, layer, value = entry[0], entry[1], int(entry[2])
        if layer not in label_images:
            raise InputError(f"No label image '{layer}' for segment '{segment_name}'.")
        masks.append((entry, _mask_array(label_images[layer], value, reference_node, segment_name)))

    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segmentation = node.GetSegmentation()
    for entry, array in masks:
        segment_name, colour = entry[0], [float(c) for c in entry[3]]
        segment_id = segmentation.GenerateUniqueSegmentID(segment_name)
        node.AddSegmentFromBinaryLabelmapRepresentation(_oriented_image(array, reference_node), segment_name,
                                                        colour, segment_id)
        segment = segmentation.GetSegment(segment_id)
        segment.SetName(segment_name)  # never an auto-generated name
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*colour)
        segment.SetColorAutoGenerated(False)
        if len(entry) > 4 and entry[4]:
            code, meaning = entry[4]
            segment.SetTag(segment.GetTerminologyEntryTagName(), terminology_entry(code, meaning))
    return node


def segment_arrays(segmentation_node, reference_node) -> dict[str, np.ndarray]:
    """{segment name: (z, y, x) uint8 0/1 array on the reference volume's grid} of a segmentation node."""
    segmentation = segmentation_node.GetSegmentation()
    out = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference_node)
        out[segmentation.GetSegment(segment_id).GetName()] = (np.asarray(array) > 0).astype(np.uint8)
    return out
