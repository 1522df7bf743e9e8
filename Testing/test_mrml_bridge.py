"""Volume node <-> SimpleITK conversion keeps voxels and geometry exactly (oblique, flipped axes)."""

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.mrml


def _oblique_image():
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=(5, 7, 9)).astype(np.int16))
    image.SetSpacing((0.7, 0.9, 3.0))
    image.SetOrigin((-12.5, 30.25, 101.0))
    angle = np.deg2rad(18.0)  # ProstateX T2 planes are tilted ~18 degrees about x
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    image.SetDirection((rot @ np.diag([-1.0, 1.0, 1.0])).flatten().tolist())
    return image


def test_round_trip_oblique_flipped(mrml_scene):
    from ProstateAIMRML import add_volume_node, image_from_volume_node

    image = _oblique_image()
    node = add_volume_node(mrml_scene, image, "oblique")
    back = image_from_volume_node(node)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    # Physical position of a voxel seen by MRML (RAS) equals ITK's (LPS) with x, y negated.
    ijk_to_ras = __import__("vtk").vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    ras = ijk_to_ras.MultiplyPoint((3, 4, 2, 1))[:3]
    lps = image.TransformIndexToPhysicalPoint((3, 4, 2))
    assert np.allclose(ras, (-lps[0], -lps[1], lps[2]), atol=1e-9)


def test_real_ct_geometry_in_scene(mrml_scene, ct_data):
    from ProstateAIMRML import add_volume_node, image_from_volume_node

    image = sitk.ReadImage(str(ct_data / "ts_abdomen_nifti" / "example_ct_sm.nii.gz"))
    node = add_volume_node(mrml_scene, image, "ct")
    back = image_from_volume_node(node)
    assert back.GetSize() == image.GetSize()
    assert np.allclose(back.GetDirection(), image.GetDirection())
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
