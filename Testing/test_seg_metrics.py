"""Segmentation metrics cross-checked against SimpleITK on real masks, plus edge cases and the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from ProstateAILib import cli, metrics
from ProstateAICore.errors import InputError

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def px_mask(prostatex_data):
    return sitk.Cast(sitk.ReadImage(str(prostatex_data / "ProstateX-0000" / "masks" / "prostate.nii.gz")), sitk.sitkUInt8)


@pytest.fixture(scope="module")
def p12_mask(promise12_data):
    return sitk.Cast(sitk.ReadImage(str(promise12_data / "case13_prostate.nii.gz")), sitk.sitkUInt8)


def _shift(mask, offset_mm):
    return sitk.Resample(mask, mask, sitk.TranslationTransform(3, offset_mm), sitk.sitkNearestNeighbor)


def _variants(mask):
    return {
        "eroded": sitk.BinaryErode(mask, [2, 2, 0]),
        "dilated": sitk.BinaryDilate(mask, [3, 3, 1]),
        "shifted": _shift(mask, (2.0, -1.5, 3.0)),
        "shifted_far": _shift(mask, (-4.0, 3.0, 6.0)),
    }


def _sitk_surface_distances(pred, truth):
    """Independent computation: |signed Maurer distance map| of one mask sampled on the other's contour."""
    out = []
    for a, b in ((pred, truth), (truth, pred)):
        dmap = sitk.GetArrayFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(
            b, squaredDistance=False, useImageSpacing=True, insideIsPositive=False)))
        contour = sitk.GetArrayFromImage(sitk.LabelContour(a, fullyConnected=False)) > 0
        out.append(dmap[contour])
    return np.concatenate(out)


@pytest.mark.parametrize("which", ["px", "p12"])
def test_dice_hd_hd95_match_simpleitk_on_real_masks(which, px_mask, p12_mask):
    truth = px_mask if which == "px" else p12_mask
    tolerance = max(truth.GetSpacing()[:2])  # boundary conventions differ by at most ~a voxel
    for name, pred in _variants(truth).items():
        result = metrics.evaluate_images(pred, truth)["1"]
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(pred, truth)
        assert result["dice"] == pytest.approx(overlap.GetDiceCoefficient(), abs=1e-9), name
        assert result["volume_similarity"] == pytest.approx(1 - abs(overlap.GetVolumeSimilarity()) / 2, abs=1e-9), name
        # SimpleITK's filter is the classic set-to-set Hausdorff distance; surface-to-surface
        # distances (ours, and the distance-map computation below) can only be larger or equal.
        hausdorff = sitk.HausdorffDistanceImageFilter()
        hausdorff.Execute(pred, truth)
        assert result["hd_mm"] >= hausdorff.GetHausdorffDistance() - 1e-6, name
        reference = _sitk_surface_distances(pred, truth)
        assert abs(result["hd_mm"] - reference.max()) <= tolerance, name
        assert abs(result["hd95_mm"] - np.percentile(reference, 95)) <= tolerance, name
        assert abs(result["assd_mm"] - reference.mean()) <= tolerance, name
        assert 0 < result["dice"] < 1 and result["hd95_mm"] > 0


def test_hd_equals_simpleitk_hausdorff_for_erosion(px_mask):
    # Eroded inside the original: set and surface definitions coincide (every distance is the depth).
    pred = sitk.BinaryErode(px_mask, [2, 2, 0])
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(pred, px_mask)
    assert metrics.evaluate_images(pred, px_mask)["1"]["hd_mm"] == pytest.approx(hausdorff.GetHausdorffDistance())


def test_identical_masks_and_volumes(p12_mask):
    result = metrics.evaluate_images(p12_mask, p12_mask)["1"]
    assert result["dice"] == 1.0 and result["hd95_mm"] == 0.0 and result["assd_mm"] == 0.0
    assert result["volume_similarity"] == 1.0 and result["abs_volume_difference_ml"] == 0.0
    voxels = int(sitk.GetArrayViewFromImage(p12_mask).sum())
    assert result["truth_volume_ml"] == pytest.approx(voxels * np.prod(p12_mask.GetSpacing()) / 1000)


def test_known_shift_gives_known_distance():
    # A box shifted by 2 voxels along x (spacing 0.5 mm): every distance is <= 1 mm, HD exactly 1 mm.
    a = np.zeros((10, 30, 30), np.uint8)
    a[3:7, 10:20, 10:20] = 1
    b = np.roll(a, 2, axis=2)
    result = metrics.binary_metrics(b, a, (3.0, 0.5, 0.5))
    assert result["hd_mm"] == pytest.approx(1.0)
    assert result["dice"] == pytest.approx(2 * 4 * 10 * 8 / (2 * 400))


def test_empty_cases_are_defined(p12_mask):
    empty = sitk.Image(p12_mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(p12_mask)
    both = metrics.evaluate_images(empty, empty)["1"]
    assert both["dice"] == 1.0 and both["hd95_mm"] == 0.0 and both["assd_mm"] == 0.0 and both["empty"] == "both"
    no_pred = metrics.evaluate_images(empty, p12_mask)["1"]
    assert no_pred["dice"] == 0.0 and no_pred["hd95_mm"] is None and no_pred["assd_mm"] is None
    assert no_pred["empty"] == "pred" and no_pred["volume_similarity"] == 0.0
    assert no_pred["abs_volume_difference_ml"] == pytest.approx(no_pred["truth_volume_ml"])
    no_truth = metrics.evaluate_images(p12_mask, empty)["1"]
    assert no_truth["dice"] == 0.0 and no_truth["hd_mm"] is None and no_truth["empty"] == "truth"
    # JSON-serialisable: undefined distances become null, not NaN/inf.
    text = json.dumps(no_pred, allow_nan=False)
    assert '"hd95_mm": null' in text


def test_grid_mismatch_is_a_clear_error(p12_mask, px_mask):
    with pytest.raises(InputError, match="not on the same grid"):
        metrics.evaluate_images(px_mask, p12_mask)
    moved = sitk.Image(p12_mask)
    moved.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="same grid"):
        metrics.evaluate_images(moved, p12_mask)
    # Float32 NIfTI-style geometry noise (1e-5 mm) is tolerated.
    nudged = sitk.Image(p12_mask)
    nudged.SetOrigin((1e-5, 0.0, 0.0))
    assert metrics.evaluate_images(nudged, p12_mask)["1"]["dice"] == 1.0


def test_multilabel_and_label_names(prostatex_data):
    zones = sitk.Cast(sitk.ReadImage(str(prostatex_data / "ProstateX-0000" / "masks" / "zones.nii.gz")), sitk.sitkUInt8)
    pred = sitk.BinaryDilate(zones == 1, [1, 1, 0]) + sitk.Cast(zones == 2, sitk.sitkUInt8) * 2
    pred = sitk.Cast(pred, sitk.sitkUInt8)
    result = metrics.evaluate_images(pred, zones, metrics.parse_labels(["1=PZ", "2=TZ"]))
    assert set(result) == {"PZ", "TZ"}
    assert result["TZ"]["dice"] < 1.0 or result["PZ"]["dice"] < 1.0
    assert 0.5 < result["PZ"]["dice"] < 1.0


def test_cli_single_and_cohort(tmp_path, promise12_data, capsys):
    names = ["case13", "case25", "case38"]
    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    pred_dir.mkdir()
    truth_dir.mkdir()
    for name in names:
        truth = sitk.ReadImage(str(promise12_data / f"{name}_prostate.nii.gz"))
        sitk.WriteImage(truth, str(truth_dir / f"{name}_prostate.nii.gz"))
        sitk.WriteImage(sitk.BinaryErode(truth, [1, 1, 0]), str(pred_dir / f"{name}_pred.nii.gz"))
    out_json = tmp_path / "one.json"
    assert cli.main(["evaluate", "--pred", str(pred_dir / "case13_pred.nii.gz"), "--truth",
                     str(truth_dir / "case13_prostate.nii.gz"), "--json", str(out_json)]) == 0
    single = json.loads(out_json.read_text())
    assert 0.5 < single["labels"]["1"]["dice"] < 1
    cohort_json = tmp_path / "cohort.json"
    assert cli.main(["evaluate", "--pred-dir", str(pred_dir), "--truth-dir", str(truth_dir),
                     "--labels", "1=prostate", "--json", str(cohort_json)]) == 0
    printed = capsys.readouterr().out
    assert "3 cases (mean ± std)" in printed and "label prostate: Dice" in printed
    report = json.loads(cohort_json.read_text())
    assert set(report["cases"]) == set(names)
    rows = list(csv.DictReader(cohort_json.with_suffix(".csv").read_text().splitlines()))
    assert [r["case"] for r in rows] == sorted(names) and all(r["label"] == "prostate" for r in rows)
    dices = [float(r["dice"]) for r in rows]
    assert report["summary"]["prostate"]["dice"]["mean"] == pytest.approx(np.mean(dices), abs=1e-5)
    # CSV list mode, with an empty prediction -> null distances flagged, not a crash.
    empty = sitk.Image(sitk.ReadImage(str(truth_dir / "case25_prostate.nii.gz")))
    empty = empty * 0
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    listing = tmp_path / "list.csv"
    listing.write_text("case,pred,truth\na,pred/case13_pred.nii.gz,truth/case13_prostate.nii.gz\nb,empty.nii.gz,truth/case25_prostate.nii.gz\n")
    assert cli.main(["evaluate", "--list", str(listing), "--csv", str(tmp_path / "l.csv")]) == 0
    assert "(1 undefined)" in capsys.readouterr().out
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "l.csv").read_text().splitlines())}
    assert rows["b"]["hd95_mm"] == "" and rows["b"]["empty"] == "pred" and float(rows["b"]["dice"]) == 0.0


def test_cli_grid_mismatch_exit_code(tmp_path, promise12_data, capsys):
    code = cli.main(["evaluate", "--pred", str(promise12_data / "case13_prostate.nii.gz"),
                     "--truth", str(promise12_data / "case00_prostate.nii.gz")])
    assert code == 2
    assert "not on the same grid" in capsys.readouterr().err
