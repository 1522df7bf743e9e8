"""Exports for the review loop (`ProstateAILib.export`, `prostateai export`, `segment`'s segmentation.dcm)
on real ProstateX-0000 data: the DICOM T2 series and its real prostate/zone masks as the segments.

Every format is read back and compared voxel for voxel with the input masks: .seg.nrrd with segfile,
NIfTI label maps with their JSON table, and DICOM SEG with highdicom, each frame placed on the T2 grid by
the source image it references (ReferencedSOPInstanceUID) and by its own ImagePositionPatient. The SEGs
are validated with dciodvfy (dicom3tools; `make test` installs it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.imageio import read_image
from ProstateAILib import cli, export, segfile
from cli_helpers import dciodvfy_errors, refused as _refused

pytestmark = pytest.mark.data

NAMES = ("Prostate", "PZ", "TZ")
SNOMED = {"Prostate": "41216001", "PZ": "279706003", "TZ": "399384005"}
MODEL = export.Algorithm("test-model", "9.9")


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def truth(prostatex_case) -> dict[str, np.ndarray]:
    """The real masks, segment name -> (z, y, x) bool."""
    prostate = sitk.GetArrayFromImage(read_image(prostatex_case / "masks" / "prostate.nii.gz"))
    zones = sitk.GetArrayFromImage(read_image(prostatex_case / "masks" / "zones.nii.gz"))
    return {"Prostate": prostate == 1, "PZ": zones == 1, "TZ": zones == 2}


@pytest.fixture(scope="module")
def segments(prostatex_case) -> list[segfile.Segment]:
    """Prostate, PZ, TZ from the mask files as they are (NIfTI float32 geometry, not yet on the T2 grid)."""
    prostate = read_image(prostatex_case / "masks" / "prostate.nii.gz")
    zones = read_image(prostatex_case / "masks" / "zones.nii.gz")
    return [export.known_segment("Prostate", prostate, 1), export.known_segment("PZ", zones, 1),
            export.known_segment("TZ", zones, 2)]


@pytest.fixture(scope="module")
def dicom_export(segments, prostatex_case, tmp_path_factory) -> Path:
    """DICOM SEG of the real masks; PZ marked as corrected by a person."""
    out = tmp_path_factory.mktemp("dicom") / "seg.dcm"
    written = export.export_segmentation(segments, prostatex_case / "t2w", "dicom-seg", out,
                                         {name: MODEL for name in NAMES}, corrected={"PZ"})
    assert written == [out] and not list(out.parent.glob(".*"))  # no temporary file left
    return out


@pytest.fixture(scope="module")
def segmented(prostatex_case, tmp_path_factory) -> Path:
    """One `prostateai segment` run on the DICOM T2 (shared by the tests of segmentation.dcm)."""
    import torch

    out = tmp_path_factory.mktemp("segment") / "ProstateX-0000"
    before = torch.get_num_threads()
    try:
        assert cli.main(["segment", "--t2", str(prostatex_case / "t2w"), "--out", str(out), "--threads", "2",
                         "--no-tta"]) == 0
    finally:
        torch.set_num_threads(before)
    return out


def source_positions(t2_folder: Path, t2: sitk.Image) -> dict[str, int]:
    """SOPInstanceUID of each T2 file -> its slice index on the T2 grid (from its ImagePositionPatient)."""
    found = {}
    for path in sorted(t2_folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        index = t2.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient])
        assert np.allclose(index[:2], 0, atol=1e-3) and abs(index[2] - round(index[2])) < 1e-3, (path, index)
        found[str(ds.SOPInstanceUID)] = int(round(index[2]))
    assert sorted(found.values()) == list(range(t2.GetSize()[2]))
    return found


def seg_on_t2_grid(path: Path, t2_folder: Path, t2: sitk.Image) -> dict[str, np.ndarray]:
    """Segment label -> (z, y, x) bool on the T2 grid, rebuilt frame by frame from a DICOM SEG."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY"
    positions = source_positions(t2_folder, t2)
    direction = np.array(t2.GetDirection()).reshape(3, 3)
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    assert np.allclose(orientation, np.concatenate([direction[:, 0], direction[:, 1]]), atol=1e-6)
    assert (seg.Rows, seg.Columns) == (t2.GetSize()[1], t2.GetSize()[0])
    labels = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    volumes = {name: np.zeros(t2.GetSize()[::-1], bool) for name in labels.values()}
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert len(frames) == len(seg.PerFrameFunctionalGroupsSequence) == int(seg.NumberOfFrames)
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        identification = group if "SegmentIdentificationSequence" in group else shared  # shared when one segment
        number = int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        ipp = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        index = t2.TransformPhysicalPointToContinuousIndex(ipp)
        assert np.allclose(index, (0, 0, positions[uid]), atol=1e-3), (uid, index)  # UID and position agree
        volume = volumes[labels[number]]
        assert not volume[positions[uid]].any()  # one frame per segment and slice
        volume[positions[uid]] = frame.astype(bool)
    # highdicom's own reading by source instance gives the same volumes
    order = sorted(positions, key=positions.get)
    stacked = seg.get_pixels_by_source_instance(source_sop_instance_uids=order, segment_numbers=sorted(labels),
                                                assert_missing_frames_are_empty=True)
    for number, name in labels.items():
        np.testing.assert_array_equal(stacked[..., sorted(labels).index(number)].astype(bool), volumes[name], name)
    return volumes


# ---------------------------------------------------------------- seg.nrrd and NIfTI

def test_seg_nrrd_round_trip(segments, prostatex_case, prostatex_t2, truth, tmp_path):
    out = tmp_path / "review.seg.nrrd"
    assert export.export_segmentation(segments, prostatex_case / "t2w", "seg.nrrd", out) == [out]
    back = segfile.read_seg_nrrd(out)
    assert list(back) == list(NAMES)
    for name, image in back.items():
        assert image.GetSize() == prostatex_t2.GetSize()
        assert np.allclose(image.GetOrigin(), prostatex_t2.GetOrigin(), atol=1e-9)  # the T2's, not float32 NIfTI's
        assert np.allclose(image.GetDirection(), prostatex_t2.GetDirection(), atol=1e-12)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image) == 1, truth[name], name)
    assert "SCT^279706003^Peripheral zone of the prostate" in out.read_bytes()[:20000].decode("latin-1")


def test_nifti_label_maps_and_table_round_trip(segments, prostatex_case, prostatex_t2, truth, tmp_path):
    out = tmp_path / "review.nii.gz"
    written = export.export_segmentation(segments, prostatex_case / "t2w", "nifti", out,
                                         {"Prostate": MODEL, "TZ": MODEL}, corrected={"PZ"})
    assert written == [out, tmp_path / "review.layer1.nii.gz", tmp_path / "review.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review.json", "review.layer1.nii.gz", "review.nii.gz"]
    gland, zones = read_image(out), read_image(tmp_path / "review.layer1.nii.gz")
    for image in (gland, zones):
        assert image.GetSize() == prostatex_t2.GetSize() and image.GetPixelID() == sitk.sitkUInt8
    gland, zones = sitk.GetArrayFromImage(gland), sitk.GetArrayFromImage(zones)
    np.testing.assert_array_equal(gland, truth["Prostate"].astype(np.uint8))  # the gland: its own file
    np.testing.assert_array_equal(zones, truth["PZ"] * 1 + truth["TZ"] * 2)  # the zones: 1 = PZ, 2 = TZ
    table = json.loads((tmp_path / "review.json").read_text())
    assert table["format"] == "prostateai-label-table"
    maps = table["label_maps"]
    assert {f: {v: e["name"] for v, e in entries.items()} for f, entries in maps.items()} == {
        "review.nii.gz": {"1": "Prostate"}, "review.layer1.nii.gz": {"1": "PZ", "2": "TZ"}}
    entries = {e["name"]: e for entries in maps.values() for e in entries.values()}
    for name in NAMES:
        assert entries[name]["code"] == {"scheme": "SCT", "value": SNOMED[name], "meaning": entries[name]["code"]["meaning"]}
        assert entries[name]["category"]["value"] == "123037004" and len(entries[name]["colour"]) == 3
    assert entries["PZ"]["corrected"] and not entries["Prostate"]["corrected"]
    assert entries["Prostate"]["algorithm"] == {"name": "ProstateAI", "model": "test-model", "version": "9.9"}
    # read back: the table brings every label map, names, codes, colours, models and corrections
    loaded = export.read_segments(out)
    assert [s.name for s in loaded.segments] == list(NAMES)
    for segment, original in zip(loaded.segments, segments):
        assert segment.code == original.code and np.allclose(segment.colour, original.colour)
        np.testing.assert_array_equal(segment.mask(), truth[segment.name], segment.name)
    assert loaded.corrected == {"PZ"} and loaded.algorithms == {"Prostate": MODEL, "TZ": MODEL}


def test_segments_are_put_onto_the_t2_grid_losslessly(prostatex_t2, truth):
    """A Slicer-style file cropped to the segment's extent and stored with flipped axes is the same mask."""
    mask = sitk.GetImageFromArray(truth["Prostate"].astype(np.uint8))
    mask.CopyInformation(prostatex_t2)
    box = np.argwhere(truth["Prostate"])
    lo, hi = box.min(0), box.max(0) + 1
    cropped = sitk.RegionOfInterest(mask, [int(v) for v in (hi - lo)[::-1]], [int(v) for v in lo[::-1]])
    flipped = sitk.Flip(cropped, [True, False, True])
    aligned = export.onto_grid(flipped, prostatex_t2, "Prostate")
    assert aligned.GetSize() == prostatex_t2.GetSize() and aligned.GetOrigin() == prostatex_t2.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(aligned) == 1, truth["Prostate"])
    shifted = sitk.Image(mask)
    shifted.SetOrigin(prostatex_t2.TransformContinuousIndexToPhysicalPoint((0.5, 0, 0)))  # half a voxel off
    with pytest.raises(InputError, match="not on the T2's voxel grid"):
        export.onto_grid(shifted, prostatex_t2, "Prostate")


# ---------------------------------------------------------------- DICOM SEG

def test_dicom_seg_frames_equal_the_masks(dicom_export, prostatex_case, prostatex_t2, truth):
    volumes = seg_on_t2_grid(dicom_export, prostatex_case / "t2w", prostatex_t2)
    assert list(volumes) == list(NAMES)
    for name in NAMES:
        assert volumes[name].sum() == truth[name].sum() > 0
        np.testing.assert_array_equal(volumes[name], truth[name], name)
    # the file order is the reverse of the spatial order: slice 0 is 1-19.dcm
    first = pydicom.dcmread(prostatex_case / "t2w" / "1-19.dcm", stop_before_pixels=True)
    assert source_positions(prostatex_case / "t2w", prostatex_t2)[str(first.SOPInstanceUID)] == 0


def test_dicom_seg_codes_algorithms_and_references(dicom_export, prostatex_case):
    seg = pydicom.dcmread(dicom_export)
    t2 = pydicom.dcmread(prostatex_case / "t2w" / "1-01.dcm", stop_before_pixels=True)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == t2.StudyInstanceUID and seg.PatientID == t2.PatientID
    assert seg.FrameOfReferenceUID == t2.FrameOfReferenceUID and seg.SeriesInstanceUID != t2.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t2.SeriesInstanceUID
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 19
    assert seg.Manufacturer == "ProstateAI" and seg.ContentLabel == "PROSTATE"
    assert "ProstateAI" in seg.SeriesDescription and "PZ" in seg.ContentDescription
    descriptions = {str(d.SegmentLabel): d for d in seg.SegmentSequence}
    assert list(descriptions) == list(NAMES)
    for name, d in descriptions.items():
        category = d.SegmentedPropertyCategoryCodeSequence[0]
        kind = d.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator, category.CodeMeaning) == (
            "123037004", "SCT", "Anatomical Structure")
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == (SNOMED[name], "SCT")
        assert len(d.RecommendedDisplayCIELabValue) == 3
    for name in ("Prostate", "TZ"):
        assert descriptions[name].SegmentAlgorithmType == "AUTOMATIC"
        algorithm = descriptions[name].SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "ProstateAI" and algorithm.AlgorithmVersion == "test-model 9.9"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
    assert descriptions["PZ"].SegmentAlgorithmType == "MANUAL"  # corrected by a person
    assert "SegmentationAlgorithmIdentificationSequence" not in descriptions["PZ"]


def test_dicom_seg_passes_dciodvfy(dicom_export):
    errors, output = dciodvfy_errors(dicom_export)
    assert not errors, output


def test_cli_exports_a_reviewed_seg_nrrd_as_dicom_seg(segmented, prostatex_case, prostatex_t2, tmp_path, capsys):
    """The review loop: `segment`'s .seg.nrrd (report.json beside it names the models), PZ corrected."""
    out = tmp_path / "reviewed.dcm"
    capsys.readouterr()
    assert cli.main(["export", str(segmented / "segmentation.seg.nrrd"), "--t2", str(prostatex_case / "t2w"),
                     "--format", "dicom-seg", "--out", str(out), "--corrected", "pz"]) == 0
    assert "reviewed.dcm" in capsys.readouterr().out
    report = json.loads((segmented / "report.json").read_text())
    seg = pydicom.dcmread(out)
    kinds = {str(d.SegmentLabel): d.SegmentAlgorithmType for d in seg.SegmentSequence}
    assert kinds == {"Prostate": "AUTOMATIC", "PZ": "MANUAL", "TZ": "AUTOMATIC"}
    versions = {str(d.SegmentLabel): d.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion
                for d in seg.SegmentSequence if d.SegmentAlgorithmType == "AUTOMATIC"}
    assert versions["Prostate"].startswith(report["models"]["gland"]["name"])
    assert versions["TZ"].startswith(report["models"]["zones"]["name"])
    errors, output = dciodvfy_errors(out)
    assert not errors, output


def test_cli_nifti_from_seg_nrrd_then_dicom_seg_from_the_table(segmented, prostatex_case, prostatex_t2, tmp_path):
    """seg.nrrd (separate 0/1 masks) -> NIfTI: the gland map and the zone map (1 = PZ, 2 = TZ), equal to
    `segment`'s own label maps; the table carries models and corrections on to a DICOM SEG."""
    t2w = str(prostatex_case / "t2w")
    out = tmp_path / "review.nii.gz"
    assert cli.main(["export", str(segmented / "segmentation.seg.nrrd"), "--t2", t2w, "--format", "nifti",
                     "--out", str(out), "--corrected", "PZ"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review.json", "review.layer1.nii.gz", "review.nii.gz"]
    for name, written in (("prostate.nii.gz", out), ("zones.nii.gz", tmp_path / "review.layer1.nii.gz")):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(written)),
                                      sitk.GetArrayFromImage(read_image(segmented / name)), name)
    dcm = tmp_path / "review.dcm"
    assert cli.main(["export", str(out), "--t2", t2w, "--format", "dicom-seg", "--out", str(dcm)]) == 0
    seg = pydicom.dcmread(dcm)
    assert {str(d.SegmentLabel): d.SegmentAlgorithmType for d in seg.SegmentSequence} == {
        "Prostate": "AUTOMATIC", "PZ": "MANUAL", "TZ": "AUTOMATIC"}
    volumes = seg_on_t2_grid(dcm, prostatex_case / "t2w", prostatex_t2)
    zones = sitk.GetArrayFromImage(read_image(segmented / "zones.nii.gz"))
    np.testing.assert_array_equal(volumes["TZ"], zones == 2)


def test_cli_exports_a_bare_label_map_with_named_values(prostatex_case, prostatex_t2, truth, tmp_path):
    out = tmp_path / "zones.seg.nrrd"
    assert cli.main(["export", str(prostatex_case / "masks" / "zones.nii.gz"), "--t2", str(prostatex_case / "t2w"),
                     "--format", "seg.nrrd", "--out", str(out), "--labels", "1=PZ", "2=TZ"]) == 0
    back = segfile.read_seg_nrrd(out)
    assert list(back) == ["PZ", "TZ"]
    for name, image in back.items():
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image) == 1, truth[name], name)


def test_dicom_seg_of_a_nifti_t2_is_refused(prostatex_case, prostatex_t2, tmp_path, capsys):
    t2 = tmp_path / "t2.nii.gz"
    sitk.WriteImage(prostatex_t2, str(t2))
    out = tmp_path / "seg.dcm"
    _refused(["export", prostatex_case / "masks" / "zones.nii.gz", "--t2", t2, "--format", "dicom-seg",
              "--out", out, "--labels", "1=PZ", "2=TZ", "--corrected", "PZ", "TZ"], capsys,
             "A DICOM SEG needs the T2 as DICOM source images", "NIfTI")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["t2.nii.gz"]


def test_dicom_seg_without_a_model_or_correction_is_refused(prostatex_case, tmp_path, capsys):
    _refused(["export", prostatex_case / "masks" / "zones.nii.gz", "--t2", prostatex_case / "t2w", "--format",
              "dicom-seg", "--out", tmp_path / "seg.dcm", "--labels", "1=PZ", "2=TZ"], capsys,
             "the model that made it is unknown")
    assert not list(tmp_path.iterdir())


def test_export_never_writes_over_an_input(prostatex_case, tmp_path, capsys):
    labels = tmp_path / "zones.nii.gz"
    shutil.copy(prostatex_case / "masks" / "zones.nii.gz", labels)
    before = labels.read_bytes()
    _refused(["export", labels, "--t2", prostatex_case / "t2w", "--format", "nifti", "--out", labels,
              "--labels", "1=PZ", "2=TZ"], capsys, "is the input")
    assert labels.read_bytes() == before


# ---------------------------------------------------------------- `segment` writes segmentation.dcm

def test_segment_writes_a_dicom_seg_that_matches_its_masks(segmented, prostatex_case, prostatex_t2):
    out = segmented
    assert (out / "segmentation.dcm").is_file()
    volumes = seg_on_t2_grid(out / "segmentation.dcm", prostatex_case / "t2w", prostatex_t2)
    prostate = sitk.GetArrayFromImage(read_image(out / "prostate.nii.gz"))
    zones = sitk.GetArrayFromImage(read_image(out / "zones.nii.gz"))
    assert prostate.any()
    np.testing.assert_array_equal(volumes["Prostate"], prostate == 1)
    np.testing.assert_array_equal(volumes["PZ"], zones == 1)
    np.testing.assert_array_equal(volumes["TZ"], zones == 2)
    report = json.loads((out / "report.json").read_text())
    seg = pydicom.dcmread(out / "segmentation.dcm", stop_before_pixels=True)
    for d in seg.SegmentSequence:
        assert d.SegmentAlgorithmType == "AUTOMATIC"
        task = "gland" if d.SegmentLabel == "Prostate" else "zones"
        algorithm = d.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "ProstateAI"
        assert algorithm.AlgorithmVersion == f"{report['models'][task]['name']} {report['models'][task]['version']}"
    errors, output = dciodvfy_errors(out / "segmentation.dcm")
    assert not errors, output


def test_segment_on_a_resampled_dicom_t2_says_why_there_is_no_dicom_seg(prostatex_case, tmp_path):
    """--allow-irregular resamples a series with a missing slice: the SEG could not reference its files, so
    the other outputs are written and the report says why segmentation.dcm is not."""
    series = tmp_path / "t2w"
    series.mkdir()
    for path in sorted((prostatex_case / "t2w").iterdir()):
        if path.name != "1-10.dcm":
            shutil.copy(path, series / path.name)
    out = tmp_path / "out"
    assert cli.main(["segment", "--t2", str(series), "--out", str(out), "--allow-irregular", "--no-tta",
                     "--threads", "2"]) == 0
    assert (out / "segmentation.seg.nrrd").is_file() and not (out / "segmentation.dcm").exists()
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any(note.startswith("segmentation.dcm not written:") for note in notes), notes


def test_segment_on_a_nifti_t2_writes_no_dicom_seg(tmp_path):
    """The choice is made from the report's T2 source: a NIfTI T2 gives no segmentation.dcm (and no note)."""
    from ProstateAILib import pipeline

    image = sitk.Image([8, 8, 4], sitk.sitkUInt8)
    result = pipeline.Result(image, image, {}, {"inputs": {"T2": {"path": "t2.nii.gz", "kind": "file"}}})
    out = pipeline.write_outputs(result, tmp_path / "out")
    assert not (out / "segmentation.dcm").exists() and (out / "segmentation.seg.nrrd").is_file()
    assert "notes" not in json.loads((out / "report.json").read_text())
