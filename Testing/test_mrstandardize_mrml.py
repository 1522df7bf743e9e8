"""MRStandardizeLogic on a real MRML scene with real MR (PROMISE12, ProstateX-0000): N4 preview and
out-of-process N4 (finish and cancel), Nyul fit/apply with histogram plot nodes, normalisation,
out-of-process ADC → T2 registration loaded as transform + volume nodes, and clear errors.

Budget: < 90 s on a 2-core machine (N4 job at preview quality, registration with 1 restart and
modest iterations; the full-quality N4 job is cancelled after its first progress report).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = [pytest.mark.mrml, pytest.mark.data]

NYUL_CASES = ("case00", "case01", "case04", "case13", "case14")
REGISTRATION_ITERATIONS = 30


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture()
def mr(mrml_scene):
    """The MRStandardize module imported with the headless stand-ins (after the scene exists)."""
    import MRStandardize

    return MRStandardize


@pytest.fixture()
def logic(mr):
    return mr.MRStandardizeLogic()


@pytest.fixture(scope="module")
def case38(promise12_data):
    return sitk.ReadImage(str(promise12_data / "case38_t2.nii.gz"))


@pytest.fixture(scope="module")
def case38_prostate(promise12_data):
    return sitk.ReadImage(str(promise12_data / "case38_prostate.nii.gz"))


@pytest.fixture(scope="module")
def prostatex(prostatex_data):
    """ProstateX-0000 T2 and ADC (DICOM, read with imageio) and the gland mask on the exact T2 grid."""
    from ProstateAICore.geometry import require_same_grid
    from ProstateAICore.imageio import read_image

    case = prostatex_data / "ProstateX-0000"
    t2 = read_image(case / "t2w")
    gland = require_same_grid(t2, sitk.ReadImage(str(case / "masks" / "prostate.nii.gz")))
    return {"t2": t2, "adc": read_image(case / "adc"), "gland": gland}


def add_node(scene, image, name, label=False):
    from ProstateAIMRML import add_volume_node

    class_name = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    return add_volume_node(scene, image, name, class_name)


def ijk_to_ras(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def voxels(node) -> np.ndarray:
    import slicer

    return np.array(slicer.util.arrayFromVolume(node), copy=True)


def volume_nodes(scene) -> list:
    import slicer

    return slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", scene)


def snapshot(node):
    return voxels(node), ijk_to_ras(node), node.GetImageData().GetMTime()


def assert_untouched(node, before) -> None:
    array, matrix, mtime = before
    np.testing.assert_array_equal(voxels(node), array)
    np.testing.assert_array_equal(ijk_to_ras(node), matrix)
    assert node.GetImageData().GetMTime() == mtime
    assert node.GetTransformNodeID() is None


def assert_on_grid(node, reference) -> None:
    assert node.GetImageData().GetDimensions() == reference.GetImageData().GetDimensions()
    np.testing.assert_array_equal(ijk_to_ras(node), ijk_to_ras(reference))


def wait_for(job, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while job.poll() == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    return job.poll()


def slice_composite(scene):
    """A slice view's composite node (a bare scene has no views; Slicer's layout creates three)."""
    return scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")


def assert_corrected_times_field_is_input(input_node, corrected, field) -> None:
    original = voxels(input_node).astype(np.float64)
    product = voxels(corrected).astype(np.float64) * voxels(field)
    inside = original > 0
    np.testing.assert_allclose(product[inside], original[inside], rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------------------------
# N4


def test_n4_preview_nodes_on_input_grid_and_views(mrml_scene, logic, mr, case38):
    node = add_node(mrml_scene, case38, "case38")
    before = snapshot(node)
    n_before = len(volume_nodes(mrml_scene))

    corrected, field = logic.previewN4(node, None, {"shrink": None, "iterations": None})

    assert len(volume_nodes(mrml_scene)) == n_before + 2
    assert corrected.GetName() == "case38 N4 preview" and field.GetName() == "case38 N4 bias field"
    assert_on_grid(corrected, node)
    assert_on_grid(field, node)
    assert_untouched(node, before)
    assert float(voxels(field).min()) > 0
    assert_corrected_times_field_is_input(node, corrected, field)
    # a real correction: the field varies by more than a few percent over the image
    assert np.ptp(voxels(field)) > 0.05

    composite = slice_composite(mrml_scene)
    display = logic.showBiasFieldOverlay(field, 0.4)
    assert composite.GetForegroundVolumeID() == field.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert display.GetColorNodeID() in mr.BIAS_FIELD_COLOR_NODE_IDS
    assert mrml_scene.GetNodeByID(display.GetColorNodeID()) is not None
    low, high = field.GetImageData().GetScalarRange()
    assert display.GetWindowLevelMin() == pytest.approx(low) and display.GetWindowLevelMax() == pytest.approx(high)
    logic.showBeforeAfter(node, corrected, showCorrected=True)
    assert composite.GetBackgroundVolumeID() == corrected.GetID()
    logic.showBeforeAfter(node, corrected, showCorrected=False)
    assert composite.GetBackgroundVolumeID() == node.GetID()

    # another preview (other settings) replaces this input's previous preview nodes
    again, again_field = logic.previewN4(node, None, {"shrink": 8, "iterations": 5})
    assert len(volume_nodes(mrml_scene)) == n_before + 2
    assert mrml_scene.GetNodeByID(corrected.GetID()) is None and mrml_scene.GetNodeByID(field.GetID()) is None
    assert again.GetName().startswith("case38 N4 preview") and again_field.GetAttribute(logic.SOURCE_ATTRIBUTE) == node.GetID()
    assert_untouched(node, before)


def test_n4_job_out_of_process_loads_new_nodes_on_input_grid(mrml_scene, logic, case38, case38_prostate):
    node = add_node(mrml_scene, case38, "case38")
    mask = add_node(mrml_scene, case38_prostate > 0, "case38 prostate", label=True)
    before = snapshot(node)

    job, tempdir = logic.startN4Job(node, mask, {"quality": "preview", "shrink": 4})
    assert job.argv[1:3] == ["-m", "MRStandardizeLib.cli"] and job.args[0] == "n4"
    assert "--field" in job.args and job.args[job.args.index("--quality") + 1] == "preview"
    assert "--mask" in job.args and job.args[job.args.index("--shrink") + 1] == "4"
    assert wait_for(job, 60) == "done", job.error
    assert job.progress == 1.0

    corrected, field = logic.finishN4Job(job, tempdir, node)

    assert not os.path.exists(tempdir)
    assert corrected.GetName() == "case38 N4 preview"
    assert_on_grid(corrected, node)
    assert_on_grid(field, node)
    assert_untouched(node, before)
    assert float(voxels(field).min()) > 0
    assert_corrected_times_field_is_input(node, corrected, field)


def test_cancel_full_quality_n4_job(mrml_scene, logic, prostatex):
    import MRStandardize

    node = add_node(mrml_scene, prostatex["t2"], "ProstateX-0000 T2")
    n_before = len(volume_nodes(mrml_scene))
    job, tempdir = logic.startN4Job(node, None, {"quality": "full"})
    outputs = [os.path.join(tempdir, logic.N4_FILES[key]) for key in ("corrected", "field")]

    deadline = time.monotonic() + 30
    while job.progress == 0.0 and job.poll() == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.state == "running" and job.progress > 0.0, "no progress reported before the cancel"
    job.cancel()

    assert job.state == "cancelled"
    assert not job.is_alive()  # the child has exited and was reaped
    with pytest.raises(ProcessLookupError):
        os.killpg(job.pid, 0)  # and its whole process group is gone
    assert not any(os.path.exists(path) for path in outputs)
    with pytest.raises(MRStandardize.Cancelled):
        logic.finishN4Job(job, tempdir, node)
    assert not os.path.exists(tempdir)
    assert len(volume_nodes(mrml_scene)) == n_before


# --------------------------------------------------------------------------------------------
# Nyul and normalisation


def test_nyul_fit_apply_and_histogram_plots(mrml_scene, logic, promise12_data, tmp_path):
    import slicer

    from MRStandardizeLib import nyul

    nodes = [add_node(mrml_scene, sitk.ReadImage(str(promise12_data / f"{c}_t2.nii.gz")), c) for c in NYUL_CASES]
    before = snapshot(nodes[0])
    model_path = tmp_path / "nyul_model.json"

    model = logic.fitNyul(nodes, str(model_path))

    payload = json.loads(model_path.read_text())
    assert payload["format"] == nyul.FORMAT and payload["n_images"] == len(nodes)
    assert payload["standard_landmarks"] == pytest.approx(model.standard_landmarks)
    standardized = logic.applyNyul(nodes[0], str(model_path))
    assert standardized.GetName() == "case00 Nyul"
    assert_on_grid(standardized, nodes[0])
    assert_untouched(nodes[0], before)
    # a training volume's own p1 / p99 foreground landmarks land on the ends of the standard scale
    original, out = voxels(nodes[0]), voxels(standardized)
    low, high = np.percentile(out[original > 0], [1, 99])
    assert low == pytest.approx(1.0, abs=0.5) and high == pytest.approx(100.0, abs=0.5)

    after = logic.updateHistogramPlots(nodes, model)
    assert after.IsA("vtkMRMLPlotChartNode")
    assert after.GetNumberOfPlotSeriesNodes() == len(nodes) + 1
    names = [after.GetNthPlotSeriesNode(i).GetName() for i in range(len(nodes))]
    assert names == list(NYUL_CASES)
    table = after.GetNthPlotSeriesNode(0).GetTableNode()
    assert table.GetNumberOfColumns() == 2 * len(nodes) and table.GetNumberOfRows() == logic.HISTOGRAM_BINS
    density = slicer.util.arrayFromTableColumn(table, "case00 density")
    centres = slicer.util.arrayFromTableColumn(table, "case00 intensity")
    assert np.sum(density) * (centres[1] - centres[0]) == pytest.approx(1.0, rel=1e-3)  # a density
    landmarks = after.GetNthPlotSeriesNode(len(nodes))
    marks = slicer.util.arrayFromTableColumn(landmarks.GetTableNode(), landmarks.GetXColumnName())
    np.testing.assert_allclose(np.unique(marks), model.standard_landmarks)

    charts = logic.nyulBeforeAfterCharts(nodes[:3], model)
    assert charts["before"].GetID() != charts["after"].GetID()
    assert charts["before"].GetNumberOfPlotSeriesNodes() == 3  # raw intensities: no standard landmarks
    assert charts["after"].GetNumberOfPlotSeriesNodes() == 4
    assert charts["after"].GetID() == after.GetID()  # replotting reuses the nodes
    assert len(slicer.util.getNodesByClass("vtkMRMLPlotChartNode", mrml_scene)) == 2
    assert len(slicer.util.getNodesByClass("vtkMRMLPlotSeriesNode", mrml_scene)) == 3 + 3 + 1


def test_normalize_percentile_and_masked_zscore(mrml_scene, logic, case38, case38_prostate):
    node = add_node(mrml_scene, case38, "case38")
    mask = add_node(mrml_scene, case38_prostate > 0, "case38 prostate", label=True)
    before = snapshot(node)

    percentile = logic.normalizeVolume(node, "percentile")
    p1, p99 = np.percentile(voxels(percentile), [1, 99])
    assert p1 == pytest.approx(0.0, abs=1e-3) and p99 == pytest.approx(1.0, abs=1e-3)
    assert_on_grid(percentile, node)

    zscore = logic.normalizeVolume(node, "zscore", mask)
    inside = voxels(zscore)[voxels(mask) > 0]
    assert inside.mean() == pytest.approx(0.0, abs=1e-3) and inside.std() == pytest.approx(1.0, abs=1e-3)
    assert zscore.GetName() == "case38 zscore"
    assert_untouched(node, before)


# --------------------------------------------------------------------------------------------
# Registration


def itk_to_ras_from_parent(transform: sitk.Transform) -> np.ndarray:
    """4x4 RAS matrix of an ITK linear transform (fixed → moving points, LPS → RAS both sides)."""
    rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    centre, translation = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + translation - rotation @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ matrix @ flip


def test_registration_job_adc_to_t2(mrml_scene, logic, prostatex):
    import slicer
    import vtk

    t2 = add_node(mrml_scene, prostatex["t2"], "T2")
    adc = add_node(mrml_scene, prostatex["adc"], "ADC")
    gland = add_node(mrml_scene, prostatex["gland"], "gland", label=True)
    t2_before, adc_before = snapshot(t2), snapshot(adc)
    settings = {"transform": "rigid", "restarts": 1, "seed": 7, "iterations": REGISTRATION_ITERATIONS}

    job, tempdir = logic.startRegistrationJob(t2, adc, settings, gland)
    assert job.args[0] == "register" and "--selection-mask" in job.args
    assert wait_for(job, 120) == "done", job.error
    itk_transform = sitk.ReadTransform(os.path.join(tempdir, "transform.tfm"))
    transform_node, resampled, report = logic.finishRegistrationJob(job, tempdir, t2, adc)

    assert not os.path.exists(tempdir)
    assert transform_node.IsA("vtkMRMLLinearTransformNode") and transform_node.GetScene() is mrml_scene
    from_parent = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformFromParent(from_parent)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(from_parent), itk_to_ras_from_parent(itk_transform),
                               atol=1e-9)
    assert transform_node.GetStorageNode() is None  # the temporary file is not referenced
    assert_on_grid(resampled, t2)
    assert resampled.GetName() == "ADC to T2"
    assert report["seed"] == 7 and report["transform_type"] == "Euler3DTransform"
    assert json.loads(resampled.GetAttribute(logic.REPORT_ATTRIBUTE)) == report
    assert_untouched(t2, t2_before)
    assert_untouched(adc, adc_before)

    text = logic.describeRegistrationReport(report)
    assert f"{report['gradient_correlation_before']:.3f} → {report['gradient_correlation_after']:.3f}" in text
    assert report["gradient_correlation_after"] >= report["gradient_correlation_before"]

    board = logic.createCheckerboard(t2, resampled)
    assert_on_grid(board, t2)
    values = voxels(board)
    assert values.min() >= 0.0 and values.max() <= 1.0

    composite = slice_composite(mrml_scene)
    logic.showRegistrationBlend(t2, resampled, 0.3)
    assert composite.GetBackgroundVolumeID() == t2.GetID()
    assert composite.GetForegroundVolumeID() == resampled.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.3)


def test_bspline_transform_file_loads_as_transform_node(mrml_scene, logic, tmp_path, prostatex):
    """BSpline composites (HDF5) load headless too, as a general (non-linear) transform node."""
    rigid = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.01, 0.0, 0.02, (1.0, -2.0, 0.5))
    bspline = sitk.BSplineTransformInitializer(prostatex["adc"], [3, 3, 2])
    bspline.SetParameters(list(np.full(len(bspline.GetParameters()), 0.5)))
    path = tmp_path / "transform.h5"
    sitk.WriteTransform(sitk.CompositeTransform([rigid, bspline]), str(path))

    node = logic.loadTransform(str(path), mrml_scene, "composite")

    assert node.IsA("vtkMRMLTransformNode") and not node.IsA("vtkMRMLLinearTransformNode")
    assert not node.IsLinear()


# --------------------------------------------------------------------------------------------
# Errors


def test_constant_volume_raises_input_error_and_adds_nothing(mrml_scene, logic, mr):
    import slicer

    from ProstateAICore.errors import InputError

    node = slicer.util.addVolumeFromArray(np.full((6, 20, 20), 7, dtype=np.int16), name="constant")
    n_before = len(volume_nodes(mrml_scene))
    with pytest.raises(InputError, match="constant"):
        logic.previewN4(node)
    with pytest.raises(InputError):
        logic.normalizeVolume(node, "percentile")
    with pytest.raises(InputError, match="no voxel data"):
        logic.previewN4(mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))
    with pytest.raises(InputError, match="Select"):
        logic.startRegistrationJob(None, node)
    with pytest.raises(InputError, match="different"):
        logic.startRegistrationJob(node, node)

    # the same error from the background job: the child's one-line message, no traceback, no node
    job, tempdir = logic.startN4Job(node, None, {"quality": "preview"})
    assert wait_for(job, 60) == "failed"
    with pytest.raises(InputError, match="constant") as error:
        logic.finishN4Job(job, tempdir, node)
    assert "Traceback" not in str(error.value)
    assert not os.path.exists(tempdir)
    assert len(volume_nodes(mrml_scene)) == n_before + 1  # only the empty node this test added


def test_parameter_defaults_map_to_settings(mr, logic):
    cls = mr.MRStandardizeParameterNode
    defaults = type("Defaults", (), {name: getattr(cls, name, None) for name in cls.__annotations__})
    assert logic.n4SettingsFromParameters(defaults) == {"quality": "full", "shrink": None, "iterations": None}
    assert logic.registrationSettingsFromParameters(defaults) == {
        "transform": "rigid", "metric_on": "intensity", "restarts": 1, "seed": 0, "iterations": 100,
    }


def test_module_self_test_runs_headless(mrml_scene, mr):
    """The in-Slicer self-test (synthetic volumes) passes on the real scene; delayDisplay only logs there."""
    test = mr.MRStandardizeTest()
    test.runTest()
    assert test.displayedMessages[-1] == "Test passed"
