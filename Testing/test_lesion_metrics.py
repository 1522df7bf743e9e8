"""Lesion detection metrics (`prostateai evaluate-lesions`, ProstateAILib.lesion_metrics) on real lesion masks.

Detection maps are made at test time over the real masks (ProstateX-0000's lesion, the PI-CAI positive
case's ISUP-valued lesion, the PI-CAI negative case's empty mask) and augmented copies of them (flips,
crops, a second lesion copied elsewhere), with candidates just above / just below IoU 0.1, split
candidates, false positives and random likelihoods. Every number is cross-checked against
`picai_eval.evaluate` (the PI-CAI reference implementation) on the same arrays: agreement <= 1e-6.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ProstateAIApp.cli import main
from ProstateAILib import lesion_metrics as lm
from cli_helpers import refused as _refused

pytestmark = pytest.mark.data
TOL = 1e-6
FROC_KEYS = {"0.5": 0.5, "1": 1.0, "2": 2.0}


# ---------------------------------------------------------------- real masks and synthetic detections

@pytest.fixture(scope="module")
def masks(shared_data, prostatex_case):
    """name -> lesion-mask image (real files)."""
    paths = {"px": prostatex_case / "masks" / "lesions.nii.gz",
             "pos": shared_data / "picai" / "picai_10032_1000032" / "masks" / "lesions.nii.gz",
             "neg": shared_data / "picai" / "picai_10000_1000000" / "masks" / "lesions.nii.gz"}
    for path in paths.values():
        if not path.exists():
            pytest.skip(f"{path} not found")
    return {name: sitk.ReadImage(str(path)) for name, path in paths.items()}


def _grow(lesion: np.ndarray, m: int) -> np.ndarray:
    """The lesion plus its m nearest background voxels (chessboard distance, ties in raster order):
    one connected region with IoU = n / (n + m) against the lesion."""
    distance = ndimage.distance_transform_cdt(~lesion, metric="chessboard").ravel()
    background = np.flatnonzero(~lesion.ravel())
    chosen = background[np.argsort(distance[background], kind="stable")[:m]]
    grown = lesion.copy().ravel()
    grown[chosen] = True
    return grown.reshape(lesion.shape)


def _free(region: np.ndarray, occupied: np.ndarray) -> bool:
    return not (ndimage.binary_dilation(region, structure=lm.CONNECTIVITY) & occupied).any()


class _Case:
    def __init__(self, name: str, image: sitk.Image, array: np.ndarray | None = None):
        self.name, self.image = name, image
        self.mask = sitk.GetArrayFromImage(image) if array is None else array
        self.det = np.zeros(self.mask.shape, np.float32)

    def add(self, region: np.ndarray, likelihood: float) -> bool:
        """Add a candidate unless it would touch another one (it would merge with it)."""
        if not _free(region, self.det > 0):
            return False
        self.det[region] = np.float32(likelihood)
        return True

    def add_box(self, rng, likelihood: float) -> None:
        """A false positive: a small box touching neither lesions nor candidates."""
        busy = (self.det > 0) | (self.mask > 0)
        for _ in range(200):
            size = (rng.integers(1, 4), rng.integers(2, 7), rng.integers(2, 7))
            start = [rng.integers(0, s - w) for s, w in zip(self.mask.shape, size)]
            box = np.zeros(self.mask.shape, bool)
            box[tuple(slice(a, a + w) for a, w in zip(start, size))] = True
            if _free(box, busy):
                self.det[box] = np.float32(likelihood)
                return
        raise AssertionError("no room for a false positive")

    def lesions(self) -> list[np.ndarray]:
        labels, n = ndimage.label(self.mask > 0, structure=lm.CONNECTIVITY)
        return [labels == i for i in range(1, n + 1)]

    def image_of(self, array: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(self.image)
        return out


def _add_lesion_copy(case: _Case, rng) -> None:
    """Copy the case's (real) lesion elsewhere in-plane: a second lesion, not touching the first."""
    lesion = case.mask > 0
    for _ in range(100):
        shift = (0, int(rng.integers(-30, 31)), int(rng.integers(-30, 31)))
        moved = ndimage.shift(lesion.astype(np.uint8), shift, order=0, mode="constant", cval=0).astype(bool)
        if moved.sum() == lesion.sum() and _free(moved, lesion):
            case.mask = case.mask.copy()
            case.mask[moved] = case.mask[lesion].max()
            return


def _fixed_cases(masks) -> list[_Case]:
    """Hand-made cases around the matching rules, on the real masks."""
    cases = []
    # IoU exactly 0.1 (a hit: IoU >= 0.1), plus a false positive
    c = _Case("px_iou_0.100", masks["px"])
    (lesion,) = c.lesions()
    n = int(lesion.sum())
    assert c.add(_grow(lesion, 9 * n), 0.8)
    c.add_box(np.random.default_rng(1), 0.3)
    cases.append(c)
    # IoU n / (10n + 1), just below 0.1: the lesion is missed and the candidate is a false positive
    c = _Case("px_iou_below", masks["px"])
    assert c.add(_grow(lesion, 9 * n + 1), 0.9)
    cases.append(c)
    # two candidates on one lesion: the larger-IoU one (less likely) is matched, the other is not scored
    c = _Case("pos_split", masks["pos"])
    (lesion,) = c.lesions()
    z = np.flatnonzero(lesion.any(axis=(1, 2)))
    gap = int(z[0] + 2 * (z[-1] - z[0]) // 3)
    big, small = lesion.copy(), lesion.copy()
    big[gap:], small[: gap + 1] = False, False
    assert small.sum() >= 0.1 * lesion.sum() and big.sum() > small.sum(), "split precondition"
    assert c.add(big, 0.4) and c.add(small, 0.95)
    cases.append(c)
    # the negative case: false positives only
    c = _Case("neg_fp", masks["neg"])
    rng = np.random.default_rng(2)
    c.add_box(rng, 0.7)
    c.add_box(rng, 0.25)
    cases.append(c)
    # the negative case with nothing detected
    cases.append(_Case("neg_empty", masks["neg"]))
    return cases


def _random_case(masks, seed: int) -> _Case:
    """An augmented copy of a real mask (flip, crop, maybe a second lesion) with random candidates."""
    rng = np.random.default_rng(seed)
    base = ("px", "pos", "neg")[seed % 3]
    image = masks[base]
    if base == "px":  # a 128 x 128 crop around the lesion keeps the test fast
        z, y, x = np.nonzero(sitk.GetArrayViewFromImage(image))
        y0 = int(np.clip(y.min() - rng.integers(20, 90), 0, image.GetSize()[1] - 128))
        x0 = int(np.clip(x.min() - rng.integers(20, 90), 0, image.GetSize()[0] - 128))
        image = image[x0:x0 + 128, y0:y0 + 128, :]
    array = sitk.GetArrayFromImage(image)
    for axis in (1, 2):
        if rng.random() < 0.5:
            array = np.flip(array, axis).copy()
    case = _Case(f"{base}_aug{seed:02d}", image, array)
    if base != "neg" and rng.random() < 0.6:
        _add_lesion_copy(case, rng)
    grid = np.round(np.arange(0.05, 1.0001, 0.05), 2)  # coarse likelihoods: ties within and across cases
    for lesion in case.lesions():
        n = int(lesion.sum())
        outcome = rng.choice(["hit", "hit", "near_miss", "none"])
        if outcome == "hit":
            iou = rng.uniform(0.1, 1.0)
            case.add(_grow(lesion, min(int(n / iou) - n, 9 * n)), rng.choice(grid))
        elif outcome == "near_miss":
            case.add(_grow(lesion, int(rng.integers(9 * n + 1, 12 * n))), rng.choice(grid))
    for _ in range(rng.integers(0, 4)):
        case.add_box(rng, rng.choice(grid))
    return case


@pytest.fixture(scope="module")
def cohort(masks) -> list[_Case]:
    return _fixed_cases(masks) + [_random_case(masks, seed) for seed in range(18)]


# ---------------------------------------------------------------- the reference

def _picai(cases: list[_Case]):
    picai_eval = pytest.importorskip("picai_eval")
    return picai_eval.evaluate(y_det=[c.det for c in cases], y_true=[c.mask for c in cases],
                               subject_list=[c.name for c in cases], num_parallel_calls=1)


def _assert_agrees(summary: dict, results, reference, cases) -> dict:
    diffs = {"auroc": abs(summary["auroc"] - reference.auroc), "ap": abs(summary["ap"] - reference.AP),
             "ranking_score": abs(summary["ranking_score"] - reference.score)}
    for key, rate in FROC_KEYS.items():
        diffs[f"froc@{key}"] = abs(summary["froc"][key] - reference.lesion_TPR_at_FPR(rate))
    assert max(diffs.values()) <= TOL, diffs
    assert summary["num_lesions"] == reference.num_lesions and summary["num_cases"] == reference.num_cases
    for case, result in zip(cases, results):  # the same lesion-level rows, case by case
        ours = sorted(result.rows)
        theirs = sorted((int(label), float(score)) for label, score, _ in reference.lesion_results[case.name])
        assert len(ours) == len(theirs) and all(a[0] == b[0] and abs(a[1] - b[1]) <= TOL
                                                for a, b in zip(ours, theirs)), (case.name, ours, theirs)
        assert abs(result.case_score - float(reference.case_pred[case.name])) <= TOL
        assert result.case_label == reference.case_target[case.name]
    return diffs


# ---------------------------------------------------------------- tests

def test_matching_rules_on_real_lesions(masks):
    cases = _fixed_cases(masks)
    summary, results = lm.evaluate_arrays([c.det for c in cases], [c.mask for c in cases], [c.name for c in cases])
    by = {r.name: r for r in results}
    assert by["px_iou_0.100"].lesion_scores == [pytest.approx(0.8)] and by["px_iou_0.100"].fp == 1
    assert by["px_iou_below"].lesion_scores == [0.0] and by["px_iou_below"].fp == 1
    assert sorted(by["px_iou_below"].rows) == [(0, pytest.approx(0.9)), (1, 0.0)]
    # PI-CAI keeps the larger-IoU candidate (0.4), not the more likely one (0.95); the other is not scored
    assert by["pos_split"].lesion_scores == [pytest.approx(0.4)]
    assert (by["pos_split"].tp, by["pos_split"].fp, by["pos_split"].unscored) == (1, 0, 1)
    assert by["pos_split"].case_score == pytest.approx(0.95)  # the case score is the map's maximum
    assert by["neg_fp"].case_label == 0 and by["neg_fp"].fp == 2 and by["neg_empty"].rows == []
    assert summary["num_lesions"] == 3 and summary["num_cases"] == 5


def test_agrees_with_picai_eval(cohort):
    summary, results = lm.evaluate_arrays([c.det for c in cohort], [c.mask for c in cohort], [c.name for c in cohort])
    assert 0.1 < summary["auroc"] < 0.999 and 0.05 < summary["ap"] < 0.999, summary  # non-trivial cohort
    assert summary["num_lesions"] >= 15 and summary["fp"] >= 10 and summary["fn"] >= 3, summary
    diffs = _assert_agrees(summary, results, _picai(cohort), cohort)
    print(f"{len(cohort)} cases, {summary['num_lesions']} lesions: AUROC {summary['auroc']:.6f} AP {summary['ap']:.6f} "
          f"FROC {summary['froc']}; max |ours - picai_eval| = {max(diffs.values()):.2e}")


@pytest.mark.parametrize("seed", [100, 200, 300])
def test_agrees_with_picai_eval_on_other_random_cohorts(masks, seed):
    cases = [_random_case(masks, seed + i) for i in range(12)]
    summary, results = lm.evaluate_arrays([c.det for c in cases], [c.mask for c in cases], [c.name for c in cases])
    if summary["auroc"] is None or summary["ap"] is None:
        pytest.skip("one-class cohort")
    _assert_agrees(summary, results, _picai(cases), cases)


def test_froc_keeps_picai_end_of_curve_rule(masks):
    """Every lesion found: PI-CAI replaces the lowest score's point (here a true positive at 0.2) by
    one at infinitely many FPs, so the sensitivity at 0.5 FP/case is 0.5, not 1.0; reproduced."""
    px, pos, neg = _Case("a", masks["px"]), _Case("b", masks["pos"]), _Case("c", masks["neg"])
    assert px.add(px.lesions()[0], 0.9) and pos.add(pos.lesions()[0], 0.2)
    neg.add_box(np.random.default_rng(0), 0.5)
    cases = [px, pos, neg]
    summary, results = lm.evaluate_arrays([c.det for c in cases], [c.mask for c in cases], [c.name for c in cases])
    assert summary["froc"] == {"0.5": 0.5, "1": 0.5, "2": 0.5}
    assert summary["ap"] == pytest.approx(1.0 * 0.5 + 2 / 3 * 0.5)  # steps at 0.9 (P 1, R 1/2) and 0.2 (P 2/3, R 1)
    _assert_agrees(summary, results, _picai(cases), cases)


def test_metric_formulas_by_hand():
    # lesions scored 0.9 (found) and 0 (missed), one false positive at 0.5
    assert lm.average_precision([1, 1, 0], [0.9, 0.0, 0.5]) == pytest.approx(0.5)
    assert lm.average_precision([0, 0], [0.3, 0.2]) is None
    assert lm.auroc([1, 0, 1, 0], [0.8, 0.8, 0.9, 0.1]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert lm.auroc([1, 1], [0.2, 0.3]) is None
    assert lm.froc([1, 1, 0], [0.9, 0.0, 0.5], num_cases=2) == {"0.5": 0.5, "1": 0.5, "2": 0.5}
    assert lm.froc([1], [0.0], num_cases=1) == {"0.5": 0.0, "1": 0.0, "2": 0.0}


def test_distance_matching(masks):
    """Centroids < 15 mm: score p + 2(1 - d/15); the PI-CAI positive case has 2 mm voxels in-plane."""
    case = _Case("pos", masks["pos"])
    (lesion,) = case.lesions()
    near = np.roll(lesion, 3, axis=2)  # 6 mm along x
    far = np.roll(lesion, -8, axis=2)  # 16 mm: a false positive
    assert case.add(near, 0.6) and case.add(far, 0.7)
    summary, (result,) = lm.evaluate_arrays([case.det], [case.mask], ["pos"], matching="distance",
                                            to_physical=case.image.TransformContinuousIndexToPhysicalPoint)
    assert result.lesion_scores == [pytest.approx(0.6 + 2 * (1 - 6 / 15), abs=1e-5)]
    assert result.fp == 1 and sorted(result.rows)[0] == (0, pytest.approx(0.7))
    assert result.case_score == pytest.approx(0.7)
    _, (iou_result,) = lm.evaluate_arrays([case.det], [case.mask], ["pos"])
    assert iou_result.num_candidates == 2  # same map, PI-CAI matching


# ---------------------------------------------------------------- the command

def _write_cohort(cases, tmp_path):
    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    pred_dir.mkdir()
    truth_dir.mkdir()
    for i, c in enumerate(cases):
        sitk.WriteImage(c.image_of(c.det), str(pred_dir / (c.name + (".mha" if i % 2 else ".nii.gz"))))
        sitk.WriteImage(c.image_of(c.mask), str(truth_dir / f"{c.name}.nii.gz"), True)
    return pred_dir, truth_dir


def test_cli_end_to_end(cohort, tmp_path, capsys):
    cases = cohort[:11]  # the hand-made cases and six random ones
    pred_dir, truth_dir = _write_cohort(cases, tmp_path)
    out_json, out_csv = tmp_path / "out" / "metrics.json", tmp_path / "out" / "cases.csv"
    out_json.parent.mkdir()
    assert main(["evaluate-lesions", "--pred-dir", str(pred_dir), "--truth-dir", str(truth_dir),
                 "--json", str(out_json), "--csv", str(out_csv)]) == 0
    assert "AUROC" in capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert {"auroc", "ap", "ranking_score", "froc", "num_cases", "num_lesions"} <= set(report)
    assert set(report["froc"]) == {"0.5", "1", "2"} and report["num_cases"] == len(cases)
    summary, results = lm.evaluate_arrays([c.det for c in cases], [c.mask for c in cases], [c.name for c in cases])
    _assert_agrees(report, results, _picai(cases), cases)
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith("case,") and len(rows) == len(cases) + 1
    assert main(["evaluate-lesions", "--pred-dir", str(pred_dir), "--truth-dir", str(truth_dir), "--matching",
                 "distance", "--json", str(tmp_path / "distance.json")]) == 0
    distance = json.loads((tmp_path / "distance.json").read_text())
    assert distance["matching"] == "distance" and distance["num_lesions"] == report["num_lesions"]
    assert distance["auroc"] == pytest.approx(report["auroc"])  # the patient score is the map's maximum either way




def _hashes(*folders) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


@pytest.fixture()
def small_cohort(masks, tmp_path):
    cases = _fixed_cases(masks)[2:4]  # the PI-CAI cases: small grids
    return cases, *_write_cohort(cases, tmp_path)


def test_refuses_duplicate_and_missing_names(small_cohort, tmp_path, capsys):
    cases, pred_dir, truth_dir = small_cohort
    extra = pred_dir / "pos_split.nrrd"
    sitk.WriteImage(cases[0].image_of(cases[0].det), str(extra))
    _refused(["evaluate-lesions", "--pred-dir", pred_dir, "--truth-dir", truth_dir], capsys, "case 'pos_split'",
             "pos_split.nrrd")
    extra.unlink()
    (pred_dir / "neg_fp.mha").unlink()
    _refused(["evaluate-lesions", "--pred-dir", pred_dir, "--truth-dir", truth_dir], capsys, "no detection map",
             "neg_fp")


def test_refuses_bad_maps(small_cohort, masks, tmp_path, capsys):
    cases, pred_dir, truth_dir = small_cohort
    pos, target = cases[0], pred_dir / "pos_split.mha"  # MetaImage keeps NaN (ITK reads NaN in NIfTI as 0)
    (pred_dir / "pos_split.nii.gz").unlink()
    argv = ["evaluate-lesions", "--pred-dir", pred_dir, "--truth-dir", truth_dir, "--json", tmp_path / "m.json"]
    sitk.WriteImage(sitk.Image(masks["px"].GetSize(), sitk.sitkFloat32), str(target))  # another grid
    _refused(argv, capsys, "not on the", "pos_split")
    nan = pos.det.copy()
    nan[0, 0, 0] = np.nan
    sitk.WriteImage(pos.image_of(nan), str(target))
    _refused(argv, capsys, "NaN")
    sitk.WriteImage(pos.image_of(pos.det * 2), str(target))
    _refused(argv, capsys, "[0, 1]")
    smooth = pos.det.copy()
    smooth[pos.det == np.float32(0.4)] = np.linspace(0.1, 0.4, int((pos.det == np.float32(0.4)).sum()))
    sitk.WriteImage(pos.image_of(smooth), str(target))
    _refused(argv, capsys, "not a detection map")
    assert not (tmp_path / "m.json").exists()


def test_never_writes_over_an_input(small_cohort, tmp_path, capsys):
    cases, pred_dir, truth_dir = small_cohort
    before = _hashes(pred_dir, truth_dir)
    base = ["evaluate-lesions", "--pred-dir", pred_dir, "--truth-dir", truth_dir]
    _refused(base + ["--json", truth_dir / "pos_split.nii.gz"], capsys, "is the input")
    _refused(base + ["--csv", pred_dir / "neg_fp.mha"], capsys, "is the input")
    _refused(base + ["--csv", truth_dir], capsys, "is the input")
    _refused(base + ["--json", tmp_path / "same.json", "--csv", tmp_path / "same.json"], capsys, "same file")
    assert _hashes(pred_dir, truth_dir) == before and not (tmp_path / "same.json").exists()
