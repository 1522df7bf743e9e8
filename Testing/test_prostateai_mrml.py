"""ProstateAILogic on a real MRML scene (slicer-core) with real MR (ProstateX-0000, oblique T2 DICOM).

- In-process segmentation: a segmentation node with exactly Prostate, PZ, TZ whose voxels (exported
  on the T2 node) are identical to `pipeline.segment` on the same T2 image; zones partition the gland;
  Dice against the reference gland; the T2 node is untouched.
- .seg.nrrd both ways: `segfile.write_seg_nrrd` (via `pipeline.write_outputs`) read by Slicer's
  segmentation storage node, and a file written by the storage node read by `segfile.read_seg_nrrd`:
  names, colours, terminology, voxels and geometry (T2 LPS origin/spacing/direction vs the node's RAS).
- The widget's path: `prostateai segment` out of process, loaded back (and a real Cancel).
- Clear InputErrors for 2D and constant volumes.

`slicer.util.loadSegmentation` / `saveNode` need the application's IO manager (absent in
slicer-core); the segmentation storage node they use is exercised directly instead.

Budget: one segmentation run is ~10-20 s on a loaded 2-core machine; the direct and the Logic runs are
made once per module (module-scoped fixture), the job test runs a third.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = [pytest.mark.mrml, pytest.mark.data]

THREADS = 1  # same torch thread count everywhere: identical floating-point sums, identical masks
SEGMENT_NAMES = ["Prostate", "PZ", "TZ"]


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def direct(prostatex_t2):
    """`pipeline.segment` on the T2 image itself (no MRML involved)."""
    from ProstateAILib import pipeline

    inputs = pipeline.prepare_inputs(prostatex_t2, {"ADC": None, "HBV": None})
    return pipeline.segment(inputs, threads=THREADS)


def expected_masks(result) -> dict[str, np.ndarray]:
    """Segment name -> (z, y, x) bool mask of a pipeline.Result, from pipeline.SEGMENTS."""
    from ProstateAILib import pipeline

    layers = {name: sitk.GetArrayFromImage(image) for name, image in pipeline.label_layers(result).items()}
    return {name: layers[layer] == value for name, layer, value, _, _ in pipeline.SEGMENTS}


def new_scene():
    from headless import install, make_scene

    install()
    return make_scene()[0]


def reference_role() -> str:
    """Node reference role of a segmentation's reference geometry volume."""
    import slicer

    return slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()


def ijk_to_ras(node) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def segment_names(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def exported(node, reference) -> dict[str, np.ndarray]:
    """Each segment exported on the reference volume (slicer.util.arrayFromSegmentBinaryLabelmap) as bool."""
    import slicer

    segmentation = node.GetSegmentation()
    out = {}
    for name in segment_names(node):
        array = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetSegmentIdBySegmentName(name),
                                                           reference)
        out[name] = np.asarray(array) > 0
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def read_with_storage_node(scene, path):
    """A .seg.nrrd read by Slicer's segmentation storage node (what slicer.util.loadSegmentation uses)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def write_with_storage_node(scene, node, path):
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(node), f"Slicer could not write {path}"
    return path


def assert_geometry_matches_lps(image: sitk.Image, ras_matrix: np.ndarray, size) -> None:
    """A SimpleITK image's LPS origin/spacing/direction describe the same grid as an IJK→RAS matrix."""
    flip = np.diag([-1.0, -1.0, 1.0])
    axes = flip @ ras_matrix[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    assert tuple(image.GetSize()) == tuple(size)
    np.testing.assert_allclose(image.GetSpacing(), spacing, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), axes / spacing, rtol=0, atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), flip @ ras_matrix[:3, 3], rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def logic_run(prostatex_t2, direct):
    """ProstateAILogic.segment on the T2 as a volume node; everything the tests check, taken at once.

    Later tests make their own scenes (which replace slicer.mrmlScene), so the arrays are exported here.
    """
    scene = new_scene()
    import ProstateAI  # after the headless stand-ins (new_scene installs them)
    import slicer
    from ProstateAIMRML import add_volume_node

    t2_node = add_volume_node(scene, prostatex_t2, "ProstateX-0000 T2")
    before = (np.array(slicer.util.arrayFromVolume(t2_node), copy=True), ijk_to_ras(t2_node),
              t2_node.GetImageData().GetMTime())
    logic = ProstateAI.ProstateAILogic()
    calls = []
    start = time.perf_counter()
    node = logic.segment(t2_node, progress=lambda fraction, message="": calls.append(fraction), threads=THREADS)
    seconds = time.perf_counter() - start
    run = {
        "class": node.GetClassName(),
        "names": segment_names(node),
        "colours": {name: node.GetSegmentation().GetSegment(node.GetSegmentation().GetSegmentIdBySegmentName(name))
                    .GetColor() for name in segment_names(node)},
        "arrays": exported(node, t2_node),
        "n_segmentation_nodes": len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode", scene)),
        "reference_id": node.GetNodeReferenceID(reference_role()),
        "t2_id": t2_node.GetID(),
        "before": before,
        "after": (np.array(slicer.util.arrayFromVolume(t2_node), copy=True), ijk_to_ras(t2_node),
                  t2_node.GetImageData().GetMTime(), t2_node.GetTransformNodeID()),
        "report": ProstateAI.ProstateAILogic.reportOf(node),
        "last_report": logic.lastReport,
        "progress": calls,
        "seconds": seconds,
    }
    yield run
    scene.Clear(1)


@pytest.fixture()
def prostateai_module(mrml_scene):
    import ProstateAI

    return ProstateAI


# --------------------------------------------------------------------------------------------
# In-process segmentation on the oblique ProstateX T2


def test_logic_segment_gives_prostate_pz_tz_voxel_identical_to_pipeline(logic_run, direct, prostatex_t2):
    direction = np.array(prostatex_t2.GetDirection()).reshape(3, 3)
    assert abs(direction[1, 2]) > 0.3, "ProstateX-0000's T2 is oblique: the test relies on it"
    assert logic_run["class"] == "vtkMRMLSegmentationNode"
    assert logic_run["names"] == SEGMENT_NAMES
    assert logic_run["n_segmentation_nodes"] == 1
    assert logic_run["reference_id"] == logic_run["t2_id"]
    from ProstateAILib import pipeline

    for name, _, _, colour, _ in pipeline.SEGMENTS:
        np.testing.assert_allclose(logic_run["colours"][name], colour, atol=1e-6)
    expected = expected_masks(direct)
    for name in SEGMENT_NAMES:
        array = logic_run["arrays"][name]
        assert array.shape == sitk.GetArrayViewFromImage(prostatex_t2).shape, name
        assert array.any(), f"{name} is empty"
        np.testing.assert_array_equal(array, expected[name], err_msg=f"{name} differs from pipeline.segment")


def test_zones_partition_the_gland(logic_run):
    arrays = logic_run["arrays"]
    assert not np.logical_and(arrays["PZ"], arrays["TZ"]).any(), "PZ and TZ overlap"
    np.testing.assert_array_equal(arrays["PZ"] | arrays["TZ"], arrays["Prostate"])


def test_prostate_dice_against_reference(logic_run, prostatex_case, prostatex_t2):
    from ProstateAICore.geometry import require_same_grid

    truth = require_same_grid(prostatex_t2, sitk.ReadImage(str(prostatex_case / "masks" / "prostate.nii.gz")))
    score = dice(logic_run["arrays"]["Prostate"], sitk.GetArrayFromImage(truth) > 0)
    # the Logic runs the same pipeline as `prostateai segment` (0.875 with gland model v2.0)
    from test_seg_pipeline import MIN_GLAND_DICE_PROSTATEX

    assert score >= MIN_GLAND_DICE_PROSTATEX, f"Dice {score:.3f}"


def test_t2_node_untouched(logic_run, prostatex_t2):
    array, matrix, mtime = logic_run["before"]
    after_array, after_matrix, after_mtime, transform = logic_run["after"]
    np.testing.assert_array_equal(after_array, array)
    np.testing.assert_array_equal(after_array, sitk.GetArrayViewFromImage(prostatex_t2))
    np.testing.assert_array_equal(after_matrix, matrix)
    assert after_mtime == mtime and transform is None


def test_report_kept_with_the_node(logic_run, prostatex_t2):
    report = logic_run["report"]
    assert report == logic_run["last_report"]
    ml = float(np.prod(prostatex_t2.GetSpacing())) / 1000.0
    arrays = logic_run["arrays"]
    assert report["volumes_ml"]["prostate"] == pytest.approx(arrays["Prostate"].sum() * ml, abs=1e-3)
    assert report["volumes_ml"]["PZ"] == pytest.approx(arrays["PZ"].sum() * ml, abs=1e-3)
    assert report["volumes_ml"]["TZ"] == pytest.approx(arrays["TZ"].sum() * ml, abs=1e-3)
    assert report["inputs"]["T2"]["node"] == "ProstateX-0000 T2"
    assert report["models"]["gland"]["name"] and report["models"]["zones"]["name"]
    progress = logic_run["progress"]
    assert progress and progress[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in progress)


# --------------------------------------------------------------------------------------------
# .seg.nrrd: segfile.py <-> Slicer's segmentation storage node


def test_segfile_seg_nrrd_reads_in_slicer(mrml_scene, prostateai_module, direct, prostatex_t2, tmp_path):
    from ProstateAILib import pipeline
    from ProstateAIMRML import add_volume_node

    out = pipeline.write_outputs(direct, tmp_path / "out")
    t2_node = add_volume_node(mrml_scene, prostatex_t2, "t2")
    node = read_with_storage_node(mrml_scene, out / "segmentation.seg.nrrd")

    assert segment_names(node) == SEGMENT_NAMES
    segmentation = node.GetSegmentation()
    for name, _, _, colour, (code, meaning) in pipeline.SEGMENTS:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        np.testing.assert_allclose(segment.GetColor(), colour, atol=1e-6)
        assert f"SCT^{code}^{meaning}" in segment.GetTerminology(), segment.GetTerminology()
    # voxels: the file's labelmaps exported on the T2 node are the pipeline's masks
    expected = expected_masks(direct)
    for name, array in exported(node, t2_node).items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
    # geometry: each internal labelmap is on the T2 grid (LPS in the file, RAS in the node)
    import slicer
    import vtk

    dims = t2_node.GetImageData().GetDimensions()
    for name in SEGMENT_NAMES:
        labelmap = node.GetBinaryLabelmapInternalRepresentation(segmentation.GetSegmentIdBySegmentName(name))
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        ras = slicer.util.arrayFromVTKMatrix(matrix)
        np.testing.assert_allclose(ras, ijk_to_ras(t2_node), rtol=0, atol=1e-9, err_msg=name)
        assert_geometry_matches_lps(prostatex_t2, ras, dims)
        # Slicer crops each layer's labelmap to its segments' Extent fields: inside the T2 grid and
        # holding the segment's bounding box (PZ and TZ share a layer, hence a shared extent)
        extent = np.array(labelmap.GetExtent()).reshape(3, 2)
        box = np.argwhere(expected[name])
        lo, hi = box.min(0)[::-1], box.max(0)[::-1]  # (x, y, z)
        assert (extent[:, 0] >= 0).all() and (extent[:, 1] <= np.array(dims) - 1).all(), name
        assert (extent[:, 0] <= lo).all() and (extent[:, 1] >= hi).all(), name
    # the file carries the T2 as reference geometry (editing in Slicer stays on the T2 grid)
    reference = slicer.vtkMRMLSegmentationNode()
    reference.SetReferenceImageGeometryParameterFromVolumeNode(t2_node)
    key = "Reference image geometry"
    got = [float(v) for v in segmentation.GetConversionParameter(key).strip(";").split(";")]
    want = [float(v) for v in reference.GetSegmentation().GetConversionParameter(key).strip(";").split(";")]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    # and the Logic's loader (the widget's path) gives the same segments with the T2 as reference
    loaded = prostateai_module.ProstateAILogic.loadSegmentationFile(str(out / "segmentation.seg.nrrd"), t2_node, "seg")
    assert segment_names(loaded) == SEGMENT_NAMES and loaded.GetStorageNode() is None
    assert loaded.GetNodeReferenceID(reference_role()) == t2_node.GetID()
    for name, array in exported(loaded, t2_node).items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)


def test_slicer_seg_nrrd_reads_with_segfile(mrml_scene, prostateai_module, direct, prostatex_t2, tmp_path):
    from ProstateAILib import pipeline, segfile
    from ProstateAIMRML import add_volume_node

    t2_node = add_volume_node(mrml_scene, prostatex_t2, "t2")
    node = prostateai_module.ProstateAILogic.addSegmentation(t2_node, direct)
    path = write_with_storage_node(mrml_scene, node, tmp_path / "slicer.seg.nrrd")

    segments = segfile.read_seg_nrrd(path)
    assert list(segments) == SEGMENT_NAMES
    expected = expected_masks(direct)
    matrix = ijk_to_ras(t2_node)
    for name, image in segments.items():
        assert_geometry_matches_lps(image, matrix, prostatex_t2.GetSize())
        np.testing.assert_allclose(image.GetOrigin(), prostatex_t2.GetOrigin(), rtol=0, atol=1e-9)
        np.testing.assert_allclose(image.GetDirection(), prostatex_t2.GetDirection(), rtol=0, atol=1e-9)
        np.testing.assert_allclose(image.GetSpacing(), prostatex_t2.GetSpacing(), rtol=0, atol=1e-9)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image) == 1, expected[name], err_msg=name)
    # colours as Slicer wrote them
    header = path.read_bytes().split(b"\n\n", 1)[0].decode("latin-1")
    for index, (name, _, _, colour, _) in enumerate(pipeline.SEGMENTS):
        assert f"Segment{index}_Name:={name}" in header
        written = [float(v) for v in header.split(f"Segment{index}_Color:=")[1].splitlines()[0].split()]
        np.testing.assert_allclose(written, colour, atol=1e-6)


def test_empty_segment_stays_empty_both_ways(mrml_scene, prostateai_module, direct, prostatex_t2, tmp_path):
    """An empty PZ (TZ fills the gland) must not read back as the gland (same label value, same layer)."""
    from ProstateAILib import pipeline, segfile
    from ProstateAIMRML import add_volume_node

    prostate = sitk.GetArrayFromImage(direct.prostate)
    zones = sitk.GetImageFromArray((prostate * 2).astype(np.uint8))
    zones.CopyInformation(direct.prostate)
    layers = {"prostate": direct.prostate, "zones": zones}
    path = segfile.write_seg_nrrd([segfile.Segment(name, layers[layer], value, colour, code)
                                   for name, layer, value, colour, code in pipeline.SEGMENTS], tmp_path / "e.seg.nrrd")
    back = {name: sitk.GetArrayViewFromImage(image).astype(bool) for name, image in segfile.read_seg_nrrd(path).items()}
    assert not back["PZ"].any()
    np.testing.assert_array_equal(back["TZ"], prostate == 1)
    t2_node = add_volume_node(mrml_scene, prostatex_t2, "t2")
    arrays = exported(read_with_storage_node(mrml_scene, path), t2_node)
    assert not arrays["PZ"].any()
    np.testing.assert_array_equal(arrays["TZ"], prostate == 1)
    np.testing.assert_array_equal(arrays["Prostate"], prostate == 1)


def test_label_images_must_be_on_the_reference_grid(mrml_scene, prostateai_module, direct, prostatex_t2):
    """A label image ~1e-6 mm off the oblique T2 (a NIfTI round trip) is accepted voxel for voxel;
    one shifted by 1 mm is refused with a clear error and adds no node."""
    from ProstateAICore.errors import InputError
    from ProstateAIMRML import add_segmentation_node, add_volume_node, segment_arrays

    t2_node = add_volume_node(mrml_scene, prostatex_t2, "t2")
    segments = [("Prostate", "prostate", 1, (0.8, 0.6, 0.4))]
    nearly = sitk.Image(direct.prostate)
    nearly.SetOrigin([o + 1e-6 for o in prostatex_t2.GetOrigin()])
    node = add_segmentation_node(mrml_scene, t2_node, {"prostate": nearly}, segments)
    np.testing.assert_array_equal(segment_arrays(node, t2_node)["Prostate"], sitk.GetArrayViewFromImage(direct.prostate))
    shifted = sitk.Image(direct.prostate)
    shifted.SetOrigin([o + 1.0 for o in prostatex_t2.GetOrigin()])
    count = mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(InputError, match="not on the reference volume's grid"):
        add_segmentation_node(mrml_scene, t2_node, {"prostate": shifted}, segments)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count


# --------------------------------------------------------------------------------------------
# The widget's path: out of process, loaded back; Cancel


def test_segment_job_loads_the_same_segmentation(mrml_scene, prostateai_module, direct, prostatex_t2):
    from ProstateAIMRML import add_volume_node

    logic = prostateai_module.ProstateAILogic()
    t2_node = add_volume_node(mrml_scene, prostatex_t2, "t2")
    job, tempdir = logic.startSegmentJob(t2_node, threads=THREADS)
    assert job.wait(timeout=120) == "done", job.error
    node, report = logic.finishSegmentJob(job, tempdir, t2_node)
    assert not os.path.exists(tempdir)
    assert segment_names(node) == SEGMENT_NAMES
    assert node.GetNodeReferenceID(reference_role()) == t2_node.GetID()
    expected = expected_masks(direct)
    for name, array in exported(node, t2_node).items():
        np.testing.assert_array_equal(array, expected[name], err_msg=name)
    assert report["volumes_ml"] == direct.report["volumes_ml"]
    assert logic.describeReport(report).startswith("Prostate ")
    # ProstateX-0000 is localised: the line says the gland model ran on its box, with which back end
    box = f"on its box ({100 * report['localisation']['box_fraction']:.0f} % of the volume)"
    assert logic.describeRun(report) == (f"Gland model {box}, {report['models']['gland']['backend']} on cpu, "
                                         f"{report['timings_s']['total']:.1f} s")
    assert prostateai_module.ProstateAILogic.reportOf(node) == report


def test_run_line_says_why_the_whole_volume_was_segmented(prostateai_module, picai_case, tmp_path):
    """picai_10000's tight crop: the localiser finds nothing, and the line says so; --no-localise says
    localisation was off."""
    from ProstateAILib import pipeline

    describe = prostateai_module.ProstateAILogic.describeRun
    tight = pipeline.run(picai_case / "t2w.nii.gz", tmp_path / "tight", threads=2, lesions=False)
    assert describe(tight).startswith("Gland model on the whole volume (the localiser found no gland), ")
    off = pipeline.run(picai_case / "t2w.nii.gz", tmp_path / "off", threads=2, lesions=False, localiser=None)
    assert describe(off).startswith("Gland model on the whole volume (localisation off), ")


def test_segment_job_cancel_stops_the_process(mrml_scene, prostateai_module, prostatex_t2):
    import slicer
    from ProstateAICore.errors import Cancelled
    from ProstateAIMRML import add_volume_node

    logic = prostateai_module.ProstateAILogic()
    t2_node = add_volume_node(mrml_scene, prostatex_t2, "t2")
    job, tempdir = logic.startSegmentJob(t2_node, threads=THREADS)
    deadline = time.monotonic() + 30
    while job.poll() == "running" and job.progress <= 0.0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() == "running", f"the job ended before it could be cancelled: {job.error}"
    job.cancel()
    assert job.poll() == "cancelled" and not job.is_alive()
    with pytest.raises(OSError):
        os.kill(job.pid, 0)  # the process is gone (reaped), not just signalled
    with pytest.raises(Cancelled):
        logic.finishSegmentJob(job, tempdir, t2_node)
    assert not os.path.exists(tempdir)
    assert not slicer.util.getNodesByClass("vtkMRMLSegmentationNode", mrml_scene)


# --------------------------------------------------------------------------------------------
# Bad input


def test_logic_rejects_2d_constant_and_missing_input(mrml_scene, prostateai_module):
    import slicer
    from ProstateAICore.errors import InputError

    logic = prostateai_module.ProstateAILogic()
    flat = slicer.util.addVolumeFromArray(np.random.default_rng(0).random((1, 32, 32)).astype(np.float32), name="flat")
    with pytest.raises(InputError, match=r"2D \(size \(32, 32, 1\)\); a 3D volume"):
        logic.segment(flat)
    constant = slicer.util.addVolumeFromArray(np.full((6, 32, 32), 120, np.int16), name="constant")
    with pytest.raises(InputError, match=r"T2 volume 'constant' is constant"):
        logic.segment(constant)
    with pytest.raises(InputError, match="Select the T2 volume"):
        logic.segment(None)
    t2 = slicer.util.addVolumeFromArray(np.random.default_rng(1).random((6, 32, 32)).astype(np.float32), name="t2")
    with pytest.raises(InputError, match="ADC volume 'constant' is constant"):
        logic.segment(t2, adcNode=constant)
    with pytest.raises(InputError, match="2D"):
        logic.startSegmentJob(flat)
    assert not slicer.util.getNodesByClass("vtkMRMLSegmentationNode", mrml_scene)
