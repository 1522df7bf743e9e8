"""The radiologist's review loop on a real MRML scene (slicer-core) with ProstateX-0000's real T2:
preview -> threshold slider -> accept (new or existing segmentation) / reject / undo -> edit ->
recompute zones -> QA record -> PSA density -> export; and a corrected .seg.nrrd written by Slicer's
own storage node used as a training label.

One in-process segmentation per test module (module-scoped), each test on its own copy.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = [pytest.mark.mrml, pytest.mark.data]

NAMES = ["Prostate", "PZ", "TZ"]


@pytest.fixture(scope="module")
def scene_and_preview(prostatex_t2):
    """A scene with the T2 and one AI preview (the Logic's in-process segmentation)."""
    pytest.importorskip("slicer")
    from headless import install, make_scene

    install()
    scene = make_scene()[0]
    import ProstateAI
    from ProstateAIMRML import add_volume_node

    logic = ProstateAI.ProstateAILogic()
    t2_node = add_volume_node(scene, prostatex_t2, "t2")
    preview = logic.segment(t2_node, threads=1)
    yield scene, logic, t2_node, preview
    scene.Clear(1)


@pytest.fixture()
def fresh(scene_and_preview):
    """A new preview for each test (copied from the module's one: same segments and probability maps)."""
    scene, logic, t2_node, preview = scene_and_preview
    copy = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "t2 AI preview")
    copy.GetSegmentation().DeepCopy(preview.GetSegmentation())
    copy.SetReferenceImageGeometryParameterFromVolumeNode(t2_node)
    for attribute in (logic.REPORT_ATTRIBUTE, logic.SOURCE_ATTRIBUTE, logic.PREVIEW_ATTRIBUTE):
        copy.SetAttribute(attribute, preview.GetAttribute(attribute))
    logic._probabilities[copy.GetID()] = logic._probabilities[preview.GetID()]
    copy.CreateDefaultDisplayNodes()
    yield scene, logic, t2_node, copy
    for node in list(scene.GetNodesByClass("vtkMRMLSegmentationNode")):
        if node is not preview:
            scene.RemoveNode(node)


def arrays(node, t2_node) -> dict[str, np.ndarray]:
    from ProstateAIMRML import segment_arrays

    return {k: v.astype(bool) for k, v in segment_arrays(node, t2_node).items()}


def n_segmentations(scene) -> int:
    return scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")


def test_a_result_arrives_as_a_preview(scene_and_preview):
    _, logic, t2_node, preview = scene_and_preview
    assert logic.isPreview(preview)
    display = preview.GetDisplayNode()
    assert display.GetVisibility2DFill() and display.GetVisibility2DOutline()
    assert display.GetOpacity2DFill() == pytest.approx(0.4)
    assert logic.previewThreshold(preview) == pytest.approx(logic.reportOf(preview)["models"]["gland"]["threshold"])


def test_threshold_slider_updates_the_preview_live(fresh):
    scene, logic, t2_node, preview = fresh
    before = arrays(preview, t2_node)
    model_threshold = logic.previewThreshold(preview)
    low = logic.setPreviewThreshold(preview, 0.1, t2_node)
    high = logic.setPreviewThreshold(preview, 0.9, t2_node)
    assert low["Prostate"] > high["Prostate"] > 0
    at_high = arrays(preview, t2_node)
    assert at_high["Prostate"].sum() < before["Prostate"].sum()
    np.testing.assert_array_equal(at_high["PZ"] | at_high["TZ"], at_high["Prostate"])
    times = []
    for threshold in (0.3, 0.5, 0.7, model_threshold):
        start = time.perf_counter()
        logic.setPreviewThreshold(preview, threshold, t2_node)
        times.append(time.perf_counter() - start)
    print(f"threshold update on 384x384x19: median {1000 * statistics.median(times):.0f} ms")
    assert statistics.median(times) < 0.5  # aim 100 ms; generous on a loaded CI machine
    # back at the model's threshold: exactly the result the pipeline deployed
    for name, mask in arrays(preview, t2_node).items():
        np.testing.assert_array_equal(mask, before[name], err_msg=name)


def test_accept_into_a_new_segmentation_and_undo(fresh):
    scene, logic, t2_node, preview = fresh
    ai = arrays(preview, t2_node)
    count = n_segmentations(scene)
    preview_id = preview.GetID()
    target = logic.acceptPreview(preview, t2_node)
    assert n_segmentations(scene) == count  # preview gone, target added
    assert scene.GetNodeByID(preview_id) is None and not logic.isPreview(target)
    accepted = arrays(target, t2_node)
    assert list(accepted) == NAMES
    for name in NAMES:
        np.testing.assert_array_equal(accepted[name], ai[name], err_msg=name)
    segment = target.GetSegmentation().GetSegment(target.GetSegmentation().GetSegmentIdBySegmentName("PZ"))
    assert "SCT^279706003^" in segment.GetTerminology()  # SNOMED CT peripheral zone kept
    logic.undoAccept(target)
    assert n_segmentations(scene) == count - 1  # the segmentation Accept created is gone again


def test_accept_into_an_existing_segmentation_replaces_only_same_names_and_undo_restores(fresh):
    scene, logic, t2_node, preview = fresh
    from ProstateAIMRML import add_segmentation_node

    shape = sitk.GetArrayViewFromImage(sitk.Image(t2_node.GetImageData().GetDimensions(), sitk.sitkUInt8)).shape
    own = np.zeros(shape, np.uint8)
    own[5:8, 100:140, 100:140] = 1
    old_prostate = np.zeros(shape, np.uint8)
    old_prostate[9, 180:200, 180:200] = 1
    target = add_segmentation_node(scene, t2_node, {"a": own, "b": old_prostate},
                                   [("Lesion", "a", 1, (1, 0, 0)), ("Prostate", "b", 1, (0, 1, 0))], "mine")
    logic.acceptPreview(preview, t2_node, target)
    after = arrays(target, t2_node)
    assert sorted(after) == sorted(["Lesion"] + NAMES)
    np.testing.assert_array_equal(after["Lesion"], own.astype(bool))
    assert after["Prostate"].sum() > old_prostate.sum()
    logic.undoAccept(target)
    restored = arrays(target, t2_node)
    assert sorted(restored) == ["Lesion", "Prostate"]
    np.testing.assert_array_equal(restored["Prostate"], old_prostate.astype(bool))
    with pytest.raises(Exception, match="Nothing to undo"):
        logic.undoAccept(target)


def test_reject_removes_only_the_preview(fresh):
    scene, logic, t2_node, preview = fresh
    count, volumes = n_segmentations(scene), scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    logic.rejectPreview(preview)
    assert n_segmentations(scene) == count - 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes


def test_edit_recompute_zones_and_review_record(fresh, tmp_path):
    scene, logic, t2_node, preview = fresh
    target = logic.acceptPreview(preview, t2_node)
    ai = arrays(target, t2_node)
    # A reviewer trims the gland's top slice and paints TZ outside the gland
    z_top = int(np.flatnonzero(ai["Prostate"].any(axis=(1, 2))).max())
    edited = {"Prostate": ai["Prostate"].copy(), "TZ": ai["TZ"].copy()}
    edited["Prostate"][z_top] = False
    edited["TZ"][z_top, :5, :5] = True
    logic._setSegmentArrays(target, t2_node, edited)
    warnings = logic.recomputeZones(target, t2_node)
    assert any("TZ voxels outside the gland" in w for w in warnings)
    final = arrays(target, t2_node)
    np.testing.assert_array_equal(final["PZ"] | final["TZ"], final["Prostate"])
    assert not (final["PZ"] & final["TZ"]).any()

    record = logic.reviewRecord(target, t2_node, reviewer="test")
    ml = float(np.prod(t2_node.GetSpacing())) / 1000.0
    assert record["edited"] and record["segments"]["Prostate"]["edited"]
    removed = int(ai["Prostate"][z_top].sum())
    assert record["segments"]["Prostate"]["volume_change_ml"] == pytest.approx(-removed * ml, abs=1e-3)
    assert 0.5 < record["segments"]["Prostate"]["dice_ai_vs_final"] < 1.0
    assert record["model"]["gland"]["name"] == "prostate-gland-t2"
    path = logic.saveReviewRecord(record, str(tmp_path / "review.json"))
    assert json.loads(open(path).read())["segments"]["PZ"]["edited"]

    density = logic.psaDensity(target, t2_node, 6.0)
    assert density == pytest.approx(6.0 / (final["Prostate"].sum() * ml), abs=1e-3)


def test_export_round_trips(fresh, tmp_path, prostatex_case):
    """seg.nrrd, NIfTI + label table and DICOM SEG from the Logic (the code `prostateai export` runs);
    a segment edited after Accept is MANUAL in the DICOM SEG, the others carry the model."""
    scene, logic, t2_node, preview = fresh
    import highdicom as hd
    from ProstateAILib import export, segfile

    target = logic.acceptPreview(preview, t2_node)
    edited = arrays(target, t2_node)["TZ"].copy()
    edited[int(np.flatnonzero(edited.any(axis=(1, 2))).max())] = False
    logic._setSegmentArrays(target, t2_node, {"TZ": edited})
    expected = arrays(target, t2_node)

    back = segfile.read_seg_nrrd(logic.exportSegmentation(target, t2_node, str(tmp_path / "reviewed.seg.nrrd")))
    assert [name for name in back if not name.startswith("Lesion")] == NAMES
    for name in NAMES:
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back[name]) > 0, expected[name], err_msg=name)

    logic.exportSegmentation(target, t2_node, str(tmp_path / "reviewed.nii.gz"), "nifti")
    loaded = export.read_segments(tmp_path / "reviewed.nii.gz")
    assert {s.name for s in loaded.segments} >= set(NAMES) and loaded.corrected == {"TZ"}
    for segment in loaded.segments:
        if segment.name in NAMES:
            np.testing.assert_array_equal(segment.mask(), expected[segment.name], err_msg=segment.name)

    with pytest.raises(Exception, match="needs the T2's DICOM files"):
        logic.exportSegmentation(target, t2_node, str(tmp_path / "no.dcm"), "dicom-seg")
    path = logic.exportSegmentation(target, t2_node, str(tmp_path / "reviewed.dcm"), "dicom-seg",
                                    t2Source=str(prostatex_case / "t2w"))
    seg = hd.seg.segread(path)
    kinds = {d.SegmentLabel: d.SegmentAlgorithmType for d in seg.SegmentSequence}
    assert kinds["TZ"] == "MANUAL" and kinds["Prostate"] == "AUTOMATIC" and kinds["PZ"] == "AUTOMATIC"
    from cli_helpers import dciodvfy_errors

    errors, output = dciodvfy_errors(path)
    assert errors == [], output


def test_a_corrected_slicer_seg_nrrd_trains(fresh, tmp_path, prostatex_case):
    """A segmentation corrected in Slicer and saved by Slicer's storage node is a training label."""
    scene, logic, t2_node, preview = fresh
    from ProstateAICore import imageio
    from ProstateAILib import dataset

    target = logic.acceptPreview(preview, t2_node)
    ai = arrays(target, t2_node)
    corrected = ai["Prostate"].copy()
    corrected[int(np.flatnonzero(corrected.any(axis=(1, 2))).min())] = False  # the radiologist trims the apex
    logic._setSegmentArrays(target, t2_node, {"Prostate": corrected})
    target.GetSegmentation().GetSegment(target.GetSegmentation().GetSegmentIdBySegmentName("Prostate")).SetName("gland (edited)")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "corrected.seg.nrrd"))
    assert storage.WriteData(target)
    sitk.WriteImage(imageio.read_image(prostatex_case / "t2w"), str(tmp_path / "t2.nii.gz"))
    listing = tmp_path / "data.json"
    listing.write_text(json.dumps([{"name": "corrected", "image": "t2.nii.gz", "label": "corrected.seg.nrrd"}]))
    case = dataset.discover_cases(listing)[0]
    label = dataset.read_label(case, sitk.ReadImage(str(tmp_path / "t2.nii.gz")))  # renamed: found by SNOMED code
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(label) > 0, corrected)

    from ProstateAIApp.cli import main

    code = main(["train", "--data", str(listing), "--out", str(tmp_path / "run"), "--epochs", "1", "--iterations", "1",
                 "--batch", "1", "--patch", "8,32,32", "--features", "4,8,8,8,8", "--val-fraction", "0", "--threads", "1"])
    assert code == 0 and (tmp_path / "run" / "model.pt").is_file()


def test_series_selectors_are_prefilled_by_the_study_classifier(prostatex_case, prostatex_t2):
    """Volumes named as Slicer's DICOM loader names them ("<series number>: <description>")."""
    pytest.importorskip("slicer")
    from headless import install, make_scene

    install()
    scene = make_scene()[0]
    import ProstateAI
    from ProstateAICore import imageio
    from ProstateAIMRML import add_volume_node

    adc = imageio.read_image(prostatex_case / "adc")
    nodes = {name: add_volume_node(scene, image, name) for name, image in (
        ("3: localizer", prostatex_t2), ("7: ep2d_diff_tra_DYNDIST_ADC", adc),
        ("4: t2_tse_tra", prostatex_t2), ("8: ep2d_diff_tra_DYNDISTCALC_BVAL", adc))}
    guesses = ProstateAI.ProstateAILogic.guessInputVolumes(scene)
    assert {role: node.GetName() for role, node in guesses.items()} == {
        "T2": "4: t2_tse_tra", "ADC": "7: ep2d_diff_tra_DYNDIST_ADC", "HBV": "8: ep2d_diff_tra_DYNDISTCALC_BVAL"}
    assert nodes
    scene.Clear(1)


def test_segment_jobs_through_the_persistent_worker(scene_and_preview):
    """useWorker: the widget's jobs run in one persistent process and load exactly the same result."""
    scene, logic, t2_node, preview = scene_and_preview
    expected = arrays(preview, t2_node)
    worker_logic = type(logic)()
    worker_logic.useWorker(True)
    try:
        for _ in range(2):
            job, tempdir = worker_logic.startSegmentJob(t2_node, threads=1)
            assert job.wait(timeout=300) == "done", job.error
            node, report = worker_logic.finishSegmentJob(job, tempdir, t2_node)
            for name, mask in arrays(node, t2_node).items():
                np.testing.assert_array_equal(mask, expected[name], err_msg=name)
            worker_logic.rejectPreview(node)
    finally:
        worker_logic.useWorker(False)


def test_lesion_table_markups_operating_point_and_centring(prostatex_case, prostatex_t2, tmp_path):
    """With ADC and HBV the Logic's result carries the lesion candidates: table, one markup point each,
    segments shown by operating point, slice views centred on a row."""
    pytest.importorskip("slicer")
    import slicer
    from headless import install, make_scene

    install()
    scene = make_scene()[0]
    import ProstateAI
    from ProstateAICore import imageio
    from ProstateAIMRML import add_volume_node

    logic = ProstateAI.ProstateAILogic()
    t2_node = add_volume_node(scene, prostatex_t2, "t2")
    adc = add_volume_node(scene, imageio.read_image(prostatex_case / "adc"), "adc")
    hbv = add_volume_node(scene, imageio.read_image(prostatex_case / "hbv"), "hbv")
    node = logic.segment(t2_node, adc, hbv, threads=1, tta=False)
    rows = logic.lesionTable(node)
    assert len(rows) >= 1 and [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    names = [node.GetSegmentation().GetNthSegment(i).GetName() for i in range(node.GetSegmentation().GetNumberOfSegments())]
    assert names[:3] == NAMES and {f"Lesion {r['id']}" for r in rows} == set(names[3:])
    # the expert lesion (ISUP 3, PZ) is the top candidate's zone on this case
    expert = sitk.GetArrayFromImage(imageio.read_image(prostatex_case / "masks" / "lesions.nii.gz")) > 0
    top = arrays(node, t2_node)[f"Lesion {rows[0]['id']}"]
    assert (top & expert).any() and rows[0]["zone"] == "PZ"

    markups = logic.showLesionMarkups(node)
    assert markups.GetNumberOfControlPoints() == len(rows)
    assert markups.GetNthControlPointLabel(0) == f"L{rows[0]['id']} {rows[0]['score']:.2f}"

    balanced = logic.setOperatingPoint(node, "balanced")
    display = node.GetDisplayNode()
    for row in rows:
        segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(f"Lesion {row['id']}")
        assert bool(display.GetSegmentVisibility(segment_id)) == (row["id"] in balanced)
    assert set(balanced) == {r["id"] for r in rows if "balanced" in r["passed"]}
    assert logic.setOperatingPoint(node, "all") == [r["id"] for r in rows]

    red = scene.AddNewNodeByClass("vtkMRMLSliceNode", "Red")
    red.SetLayoutName("Red")
    red.SetOrientation("Axial")
    centre = logic.centreOnLesion(node, rows[0]["id"])
    matrix = red.GetSliceToRAS()
    np.testing.assert_allclose([matrix.GetElement(i, 3) for i in range(3)], centre, atol=1e-3)
    with pytest.raises(Exception, match="no lesion candidate 99"):
        logic.centreOnLesion(node, 99)
    markups_id = markups.GetID()
    logic.rejectPreview(node)
    assert scene.GetNodeByID(markups_id) is None  # the preview's lesion markups go with it
    scene.Clear(1)


def test_grow_a_lesion_from_a_point_into_the_segmentation(fresh, prostatex_case):
    """Click-to-grow in the module: a point at the expert lesion's centre grows into a segment
    (Dice >= 0.5 against the expert mask; the grow factors were tuned on this case: README)."""
    scene, logic, t2_node, preview = fresh
    from ProstateAICore import imageio
    from ProstateAIMRML import add_volume_node

    expert_image = imageio.read_image(prostatex_case / "masks" / "lesions.nii.gz")
    expert = sitk.GetArrayFromImage(expert_image) > 0
    z, y, x = np.argwhere(expert).mean(axis=0)
    lps = expert_image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
    ras = [-lps[0], -lps[1], lps[2]]
    adc = add_volume_node(scene, imageio.read_image(prostatex_case / "adc"), "adc")
    hbv = add_volume_node(scene, imageio.read_image(prostatex_case / "hbv"), "hbv")
    target = logic.acceptPreview(preview, t2_node)
    grown = logic.growLesion(target, t2_node, ras, adc, hbv)
    mask = arrays(target, t2_node)[grown["segment"]]
    dice = 2 * (mask & expert).sum() / (mask.sum() + expert.sum())
    assert grown["segment"] == "Lesion (grown) 1" and sorted(grown["sequences"]) == ["ADC", "HBV", "T2"]
    assert dice >= 0.5, dice
    scene.RemoveNode(adc)
    scene.RemoveNode(hbv)
