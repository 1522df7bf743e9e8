"""CTPreprocessLogic on a real MRML scene with real CT: new output node, input untouched, display-only
preview, histogram plot nodes, resampling, reference grid, and clear errors for bad input."""

from __future__ import annotations

import types

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.mrml

LUNGS = (-1350.0, 150.0)  # lungs preset: WL -600, WW 1500


@pytest.fixture()
def ct(mrml_scene):
    """The CTPreprocess module imported with the headless stand-ins (after the scene exists)."""
    import CTPreprocess

    return CTPreprocess


@pytest.fixture(scope="module")
def lung_image(ct_data):
    return sitk.ReadImage(str(ct_data / "radiomics_lung1" / "lung1_image.nrrd"))


@pytest.fixture(scope="module")
def small_image(ct_data):
    return sitk.ReadImage(str(ct_data / "ts_abdomen_nifti" / "example_ct_sm.nii.gz"))


def add_node(scene, image, name):
    from ProstateAIMRML import add_volume_node

    return add_volume_node(scene, image, name)


def ijk_to_ras(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_nodes(scene) -> list:
    import slicer

    return slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", scene)


def default_parameters(ct, **changes):
    """The parameter node's defaults (class attributes of the wrapper) as a plain object."""
    cls = ct.CTPreprocessParameterNode
    values = {name: getattr(cls, name, None) for name in cls.__annotations__}
    values.update(changes)
    return types.SimpleNamespace(**values)


def expected_uint8(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """round((HU - lo) / (hi - lo) * 255) clipped to [0, 255] (round half to even, in float64)."""
    return np.clip(np.rint((hu.astype(np.float64) - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def test_lungs_uint8_new_output_and_input_untouched(mrml_scene, ct, lung_image):
    import slicer

    from CTPreprocessLib.pipeline import CTPipelineConfig

    node = add_node(mrml_scene, lung_image, "lung1")
    before = np.array(slicer.util.arrayFromVolume(node), copy=True)
    matrix_before = ijk_to_ras(node)
    mtime_before = node.GetImageData().GetMTime()
    n_before = len(volume_nodes(mrml_scene))

    logic = ct.CTPreprocessLogic()
    output, report = logic.process(node, None, CTPipelineConfig(window_mode="preset", preset="lungs", dtype="uint8"))

    assert output.GetID() != node.GetID() and len(volume_nodes(mrml_scene)) == n_before + 1
    assert output.GetName() == "lung1 preprocessed"
    assert output.GetDisplayNode() is not None
    out = slicer.util.arrayFromVolume(output)
    assert out.dtype == np.uint8 and out.shape == before.shape
    np.testing.assert_array_equal(out, expected_uint8(before, *LUNGS))
    assert out.min() == 55 and out.max() == 255  # air (-1024 HU) -> 55; above 150 HU saturates
    np.testing.assert_allclose(ijk_to_ras(output), matrix_before, atol=1e-9)
    assert report["window"] == list(LUNGS) and report["dtype"] == "uint8"
    assert report["logic_seconds"] >= report["total_seconds"] > 0
    # The input node: same voxels, geometry and image data (not even touched).
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    np.testing.assert_array_equal(ijk_to_ras(node), matrix_before)
    assert node.GetImageData().GetMTime() == mtime_before
    assert "lungs" in output.GetAttribute(logic.REPORT_ATTRIBUTE)


def test_existing_output_node_is_updated_in_place(mrml_scene, ct, small_image):
    import slicer

    from CTPreprocessLib.pipeline import CTPipelineConfig

    node = add_node(mrml_scene, small_image, "ct")
    target = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "target")
    n_before = len(volume_nodes(mrml_scene))
    output, _ = ct.CTPreprocessLogic().process(node, target, CTPipelineConfig(window_mode="clip", clip=(-100.0, 200.0)))
    assert output is target and len(volume_nodes(mrml_scene)) == n_before
    values = slicer.util.arrayFromVolume(target)
    assert values.dtype == np.float32 and values.min() == -100.0 and values.max() == 200.0
    np.testing.assert_allclose(ijk_to_ras(target), ijk_to_ras(node), atol=1e-9)


def test_bundled_sample_self_test(mrml_scene, ct, monkeypatch, repo_root):
    """The module's own Slicer self-test, run here with loadVolume done through SimpleITK."""
    import os

    import slicer

    path = ct.sampleDataPath()
    assert os.path.samefile(path, repo_root / "Resources" / "SampleData" / "sample_ct_abdomen_pelvis.nii.gz")

    def load_volume(filename):
        name = os.path.basename(filename).split(".")[0]
        return add_node(slicer.mrmlScene, sitk.ReadImage(filename), name)

    monkeypatch.setattr(slicer.util, "loadVolume", load_volume, raising=False)
    test = ct.CTPreprocessTest()
    test.runTest()
    outputs = [n for n in volume_nodes(mrml_scene) if n.GetName() == "sample_ct_abdomen_pelvis preprocessed"]
    assert len(outputs) == 1


def test_preset_preview_changes_display_only(mrml_scene, ct, small_image):
    import slicer

    from ProstateAICore.errors import InputError

    node = add_node(mrml_scene, small_image, "ct")
    before = np.array(slicer.util.arrayFromVolume(node), copy=True)
    mtime = node.GetImageData().GetMTime()
    logic = ct.CTPreprocessLogic()
    display = node.GetDisplayNode()
    assert display.GetAutoWindowLevel()

    assert logic.applyPreset(node, "lungs") == LUNGS
    assert not display.GetAutoWindowLevel()
    assert display.GetWindow() == pytest.approx(1500.0) and display.GetLevel() == pytest.approx(-600.0)
    logic.applyPreset(node, "liver")
    assert display.GetWindow() == pytest.approx(150.0) and display.GetLevel() == pytest.approx(30.0)
    logic.previewWindow(node, -160.0, 240.0)
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((-160.0, 240.0))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
    assert node.GetImageData().GetMTime() == mtime

    with pytest.raises(InputError, match="Unknown window preset 'lung'"):
        logic.applyPreset(node, "lung")
    with pytest.raises(InputError, match="upper end"):
        logic.previewWindow(node, 100.0, 100.0)
    logic.restoreAutoWindow(node)
    assert display.GetAutoWindowLevel()


def test_histogram_plot_nodes(mrml_scene, ct, small_image):
    import slicer

    node = add_node(mrml_scene, small_image, "ct")
    voxels = slicer.util.arrayFromVolume(node)
    logic = ct.CTPreprocessLogic()
    chart = logic.updateHistogramPlot(node, LUNGS)
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 2
    series = chart.GetNthPlotSeriesNode(0)
    table = series.GetTableNode()
    assert series.GetXColumnName() == "HU" and series.GetYColumnName() == "Voxels"
    assert series.GetPlotType() == series.PlotTypeScatterBar
    assert table.GetNumberOfRows() == logic.HISTOGRAM_BINS == 256
    counts = slicer.util.arrayFromTableColumn(table, "Voxels")
    centres = slicer.util.arrayFromTableColumn(table, "HU")
    assert counts.sum() == voxels.size
    assert voxels.min() < centres[0] < centres[-1] < voxels.max()
    reference, _ = np.histogram(voxels, bins=256)
    np.testing.assert_array_equal(counts, reference)
    window_series = chart.GetNthPlotSeriesNode(1)
    assert chart.HasPlotSeriesNodeID(window_series.GetID())
    np.testing.assert_array_equal(slicer.util.arrayFromTableColumn(window_series.GetTableNode(), "HU"), [-1350, -1350, 150, 150])

    # Moving the window reuses the same nodes; no window removes the window series.
    n_nodes = mrml_scene.GetNumberOfNodes()
    assert logic.updateHistogramPlot(node, (-100.0, 300.0)) is chart
    assert mrml_scene.GetNumberOfNodes() == n_nodes
    np.testing.assert_array_equal(slicer.util.arrayFromTableColumn(window_series.GetTableNode(), "HU"), [-100, -100, 300, 300])
    logic.updateHistogramPlot(node, None)
    assert chart.GetNumberOfPlotSeriesNodes() == 1 and chart.HasPlotSeriesNodeID(series.GetID())
    view = logic.histogramPlotViewNode(mrml_scene)
    assert view.IsA("vtkMRMLPlotViewNode") and logic.histogramPlotViewNode(mrml_scene) is view


def test_resample_to_1p5_mm_from_parameters(mrml_scene, ct, small_image):
    import slicer

    node = add_node(mrml_scene, small_image, "ct")
    logic = ct.CTPreprocessLogic()
    parameters = default_parameters(ct, spacingX=1.5, spacingY=1.5, spacingZ=1.5, interpolator="linear", windowMode="none")
    config = logic.configFromParameters(parameters, node)
    assert config.spacing == (1.5, 1.5, 1.5) and config.window_mode == "none"
    output, report = logic.process(node, None, config)
    assert output.GetSpacing() == pytest.approx((1.5, 1.5, 1.5))
    in_matrix, out_matrix = ijk_to_ras(node), ijk_to_ras(output)
    np.testing.assert_allclose(out_matrix[:3, 3], in_matrix[:3, 3], atol=1e-6)  # origin kept
    np.testing.assert_allclose(out_matrix[:3, :3] / 1.5, in_matrix[:3, :3] / 3.0, atol=1e-9)  # same axes
    in_dims = np.array(node.GetImageData().GetDimensions())
    out_dims = np.array(output.GetImageData().GetDimensions())
    np.testing.assert_array_equal(out_dims, in_dims * 2)  # same extent at half the spacing
    assert [step["name"] for step in report["steps"]][:2] == ["validate", "resample"]
    assert slicer.util.arrayFromVolume(output).dtype == np.float32


def test_reference_grid_resample(mrml_scene, ct, small_image):
    node = add_node(mrml_scene, small_image, "ct")
    reference_image = sitk.Image([40, 30, 10], sitk.sitkInt16)
    reference_image.SetSpacing((6.0, 7.0, 5.0))
    reference_image.SetOrigin(small_image.GetOrigin())
    reference_image.SetDirection(small_image.GetDirection())
    reference = add_node(mrml_scene, reference_image, "reference")
    logic = ct.CTPreprocessLogic()
    parameters = default_parameters(ct, referenceVolume=reference, spacingX=1.0, windowMode="preset", preset=None)
    parameters.preset = ct.CTWindowPreset["abdomen_soft_tissue"]
    config = logic.configFromParameters(parameters, node)
    assert config.spacing is None and config.preset == "abdomen_soft_tissue"  # the reference replaces the spacing
    output, _ = logic.process(node, None, config, referenceVolumeNode=reference)
    np.testing.assert_allclose(ijk_to_ras(output), ijk_to_ras(reference), atol=1e-9)
    assert output.GetImageData().GetDimensions() == (40, 30, 10)


def test_parameters_to_config(ct, mrml_scene, small_image):
    from ProstateAICore.errors import InputError

    node = add_node(mrml_scene, small_image, "ct")
    logic = ct.CTPreprocessLogic()
    config = logic.configFromParameters(default_parameters(ct))
    assert config.window_mode == "preset" and config.preset == "abdomen_soft_tissue"
    assert config.spacing is None and config.size is None and config.pad_value is None
    assert config.clip == (-1350.0, 2000.0) and config.quantiles == (0.6, 0.99) and config.dtype == "float32"
    # Spacing 0 keeps the input spacing on that axis.
    assert logic.configFromParameters(default_parameters(ct, spacingZ=1.25), node).spacing == (3.0, 3.0, 1.25)
    with pytest.raises(InputError, match="select an input volume"):
        logic.configFromParameters(default_parameters(ct, spacingZ=1.25))
    config = logic.configFromParameters(default_parameters(ct, cropSizeX=64, cropSizeY=64, cropSizeZ=32, autoPadValue=False))
    assert config.size == (64, 64, 32) and config.pad_value == -1024.0
    with pytest.raises(InputError, match="set all three sizes"):
        logic.configFromParameters(default_parameters(ct, cropSizeX=64))
    assert logic.windowFromParameters(default_parameters(ct, windowMode="custom", windowLevel=40.0, windowWidth=80.0)) == (0.0, 80.0)
    assert logic.windowFromParameters(default_parameters(ct, windowMode="none")) is None


def test_constant_volume_raises_input_error_and_adds_nothing(mrml_scene, ct):
    from CTPreprocessLib.pipeline import CTPipelineConfig
    from ProstateAICore.errors import InputError

    image = sitk.Image([20, 20, 5], sitk.sitkInt16) - 1000
    image.SetSpacing((1.0, 1.0, 3.0))
    node = add_node(mrml_scene, image, "constant")
    n_before = len(volume_nodes(mrml_scene))
    logic = ct.CTPreprocessLogic()
    with pytest.raises(InputError) as error:
        logic.process(node, None, CTPipelineConfig(window_mode="preset", preset="lungs", dtype="uint8"))
    message = str(error.value)
    assert "constant" in message.lower() and "Traceback" not in message and len(message) < 400
    assert len(volume_nodes(mrml_scene)) == n_before

    with pytest.raises(InputError, match="other than the input"):
        logic.process(node, node, CTPipelineConfig())
    with pytest.raises(InputError, match="Select an input"):
        logic.process(None)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxel data"):
        logic.process(empty)
    assert len(volume_nodes(mrml_scene)) == n_before + 1
