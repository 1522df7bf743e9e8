"""Lesion detection metrics (the PI-CAI protocol) and `prostateai evaluate-lesions`.

Inputs, per case (paired by file name without .nii.gz/.nii/.mha/.nrrd):
- a detection map: float voxels in [0, 1], each candidate lesion a connected region filled with its
  likelihood, 0 elsewhere (the PI-CAI convention). Voxels are read as float32, as PI-CAI does. A
  connected region holding more than one value is refused: that is a probability map, not a
  detection map (turn it into candidates first);
- a lesion mask: whole numbers, lesion voxels > 0 (ISUP grade values are fine), no negative values.

Per case (PI-CAI, Saha et al. 2024; reproduces `picai_eval.evaluate` with its defaults):
- candidates = connected components (26-connectivity) of the detection map's non-zero voxels, each
  with its likelihood; ground-truth lesions = connected components (26-connectivity) of mask > 0;
- overlap = IoU = (|C ∩ L| + 1e-8) / (|C ∪ L| + 1e-8) (PI-CAI's smoothed IoU; the 1e-8 only decides
  exact ties between candidates, identically to PI-CAI); a candidate can hit a lesion when IoU >= 0.1;
- matching: one candidate per lesion and one lesion per candidate, chosen by an optimal assignment
  (`scipy.optimize.linear_sum_assignment`, maximised) over weights 1 + IoU for the pairs that can hit
  and 0 otherwise: as many lesions as possible are matched, then the total IoU is maximised. So when
  two candidates overlap one lesion, the one with the LARGER IoU is taken, not the more likely one —
  exactly as picai_eval does;
- every matched lesion is (1, likelihood of its candidate); an unmatched lesion is a false negative
  (1, 0.0); a candidate that hits no lesion is a false positive (0, likelihood); a candidate that hits
  a lesion but lost it to another candidate is not scored at all (picai_eval's default
  `allow_unmatched_candidates_with_minimal_overlap=True`);
- case score = the maximum of the detection map; case label = 1 when the mask holds any lesion.

Cohort metrics:
- `auroc`: patient-level area under the ROC curve of (case label, case score); ties count 1/2 (the
  trapezoidal ROC area, as sklearn's roc_curve + auc). None (JSON null) without both classes;
- `ap`: lesion-level average precision over all (label, score) pairs: distinct scores in descending
  order, AP = Σ (R_t − R_{t−1}) · P_t, the step-function (non-interpolated, sklearn-style) sum, with
  the precision at score 0 set to 0 (the false-negative rows only tell how many lesions there are).
  None without lesions;
- `ranking_score` = (auroc + ap) / 2, the PI-CAI ranking score;
- `froc`: lesion sensitivity at 0.5, 1 and 2 false positives per case, read off the curve of
  (TP(t) / lesions, FP(t) / cases) over every distinct score t as PI-CAI does: the point of the
  LOWEST distinct score is replaced by (sensitivity of the score above it, infinitely many FPs), and
  the sensitivity at F is that of the last point with FP/case <= F (0 if none). When some lesion was
  missed the lowest score is the false negatives' 0 and this only removes that artificial point;
  when every lesion was found it also drops the lowest real candidate (a PI-CAI quirk, kept so the
  numbers are PI-CAI's). picai_eval subsamples thresholds beyond 10,000 distinct scores; we don't.

`--matching distance` (METHODS.md, Pellicer-Valero et al. 2022): a candidate can match a lesion
when their centroids (physical, mm) are less than 15 mm apart; the match score is
p + k·(1 − d / 15 mm), k = 2 (so in [0, 3]); the assignment maximises the number of matches, then the
total match score; unmatched lesions score 0, candidates with no lesion within 15 mm are false
positives with score p, candidates within 15 mm of a lesion that went to another are not scored.
The patient score stays the maximum detection likelihood (the distance bonus depends on the truth
and must not enter a patient-level score); AP and FROC use the match scores.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from ProstateAICore.commands import refuse_overwriting
from ProstateAICore.errors import InputError
from ProstateAICore.geometry import require_same_grid
from ProstateAICore.imageio import read_image, require_3d, write_all

MIN_IOU = 0.1  # PI-CAI's min_overlap with the IoU overlap function
IOU_SMOOTHING = 1e-8  # PI-CAI's IoU epsilon
DISTANCE_MM = 15.0  # centroid distance for a match (--matching distance)
DISTANCE_K = 2.0  # weight of the distance term in the match score
FROC_RATES = (0.5, 1.0, 2.0)  # false positives per case
SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-neighbourhood, as PI-CAI
MATCHINGS = ("iou", "distance")


@dataclass
class CaseResult:
    """One case: `rows` are the lesion-level (label, score) pairs that enter AP and FROC."""

    name: str
    rows: list[tuple[int, float]] = field(default_factory=list)
    case_score: float = 0.0
    case_label: int = 0
    num_lesions: int = 0
    num_candidates: int = 0
    tp: int = 0
    fn: int = 0
    fp: int = 0
    unscored: int = 0  # candidates that hit a lesion taken by another candidate
    lesion_scores: list[float] = field(default_factory=list)  # per ground-truth lesion (0 = missed)


# ---------------------------------------------------------------- one case

def candidates_of(detection: np.ndarray, name: str = "detection map") -> tuple[np.ndarray, int, np.ndarray]:
    """(labels, n, likelihoods): connected candidates of a detection map; likelihoods[i] is candidate i+1's."""
    labels, n = ndimage.label(detection != 0, structure=CONNECTIVITY)
    if n == 0:
        return labels, 0, np.zeros(0)
    index = np.arange(1, n + 1)
    high = np.asarray(ndimage.maximum(detection, labels, index), dtype=np.float64)
    low = np.asarray(ndimage.minimum(detection, labels, index), dtype=np.float64)
    mixed = np.flatnonzero(high != low)
    if len(mixed):
        i = int(mixed[0])
        raise InputError(
            f"The {name} is not a detection map: {len(mixed)} connected region(s) hold more than one value "
            f"(region {i + 1} holds {low[i]:g} to {high[i]:g}). A detection map fills each candidate lesion with "
            "one likelihood (PI-CAI); extract candidates from a probability map first.")
    return labels, n, high


def lesions_of(mask: np.ndarray) -> tuple[np.ndarray, int]:
    return ndimage.label(mask > 0, structure=CONNECTIVITY)


def iou_matrix(lesion_labels: np.ndarray, n_lesions: int, candidate_labels: np.ndarray,
               n_candidates: int) -> np.ndarray:
    """Smoothed IoU of every (lesion, candidate) pair, shape (n_lesions, n_candidates)."""
    lesion_sizes = np.bincount(lesion_labels.ravel(), minlength=n_lesions + 1)[1:]
    candidate_sizes = np.bincount(candidate_labels.ravel(), minlength=n_candidates + 1)[1:]
    both = (lesion_labels > 0) & (candidate_labels > 0)
    pairs = (lesion_labels[both].astype(np.int64) - 1) * n_candidates + (candidate_labels[both].astype(np.int64) - 1)
    inter = np.bincount(pairs, minlength=n_lesions * n_candidates).reshape(n_lesions, n_candidates)
    union = lesion_sizes[:, None] + candidate_sizes[None, :] - inter
    return (inter + IOU_SMOOTHING) / (union + IOU_SMOOTHING)


def centroids_mm(labels: np.ndarray, n: int, to_physical) -> np.ndarray:
    """Physical centroid (x, y, z in mm) of components 1..n; `to_physical(ijk) -> xyz` is affine."""
    if n == 0:
        return np.zeros((0, 3))
    centres = ndimage.center_of_mass(np.ones(labels.shape, dtype=np.uint8), labels, np.arange(1, n + 1))
    return np.array([to_physical(tuple(float(v) for v in reversed(c))) for c in centres], dtype=np.float64)


def _assign(weights: np.ndarray) -> list[tuple[int, int]]:
    """(lesion, candidate) pairs of the maximum-weight assignment, pairs of weight 0 left out."""
    if weights.size == 0:
        return []
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if weights[r, c] > 0]


def evaluate_case(detection: np.ndarray, mask: np.ndarray, name: str = "case", matching: str = "iou",
                  to_physical=None) -> CaseResult:
    """Score one case: `detection` (float, [0, 1], z y x) against `mask` (whole numbers, lesions > 0).

    `to_physical` maps a voxel index (i, j, k) to mm (x, y, z); needed for matching="distance"
    (default: unit spacing, identity direction).
    """
    if matching not in MATCHINGS:
        raise InputError(f"Unknown matching '{matching}' (choose from {', '.join(MATCHINGS)}).")
    detection = np.asarray(detection, dtype=np.float32)
    candidate_labels, n_candidates, likelihood = candidates_of(detection, f"detection map of case '{name}'")
    lesion_labels, n_lesions = lesions_of(np.asarray(mask))
    result = CaseResult(name=name, num_lesions=n_lesions, num_candidates=n_candidates, case_label=int(n_lesions > 0),
                        case_score=float(detection.max()) if detection.size else 0.0)
    if matching == "iou":
        overlap = iou_matrix(lesion_labels, n_lesions, candidate_labels, n_candidates)
        can_hit = overlap >= MIN_IOU
        weights = np.where(can_hit, overlap + 1.0, 0.0)  # matching first, then the amount of overlap
        score = np.broadcast_to(likelihood[None, :], weights.shape)
    else:
        to_physical = to_physical or (lambda ijk: ijk)
        lesion_xyz = centroids_mm(lesion_labels, n_lesions, to_physical)
        candidate_xyz = centroids_mm(candidate_labels, n_candidates, to_physical)
        distance = np.linalg.norm(lesion_xyz[:, None, :] - candidate_xyz[None, :, :], axis=-1)
        can_hit = distance < DISTANCE_MM
        score = likelihood[None, :] + DISTANCE_K * (1.0 - distance / DISTANCE_MM)
        # a score is at most 1 + k: this offset makes one more match outweigh any gain in score
        weights = np.where(can_hit, score + (1.0 + DISTANCE_K) * (min(n_lesions, n_candidates) + 1), 0.0)
    matched = _assign(weights)
    lesion_scores = [0.0] * n_lesions
    for lesion, candidate in matched:
        lesion_scores[lesion] = float(score[lesion, candidate])
    result.lesion_scores = lesion_scores
    result.rows = [(1, s) for s in lesion_scores]
    hits_any = can_hit.any(axis=0) if n_lesions else np.zeros(n_candidates, dtype=bool)
    taken = {candidate for _, candidate in matched}
    for candidate in range(n_candidates):
        if not hits_any[candidate]:
            result.rows.append((0, float(likelihood[candidate])))
    result.tp = len(matched)
    result.fn = n_lesions - len(matched)
    result.fp = int(np.count_nonzero(~hits_any))
    result.unscored = n_candidates - result.fp - len(taken)
    return result


# ---------------------------------------------------------------- cohort metrics

def auroc(labels, scores) -> float | None:
    """Area under the ROC curve (ties count 1/2); None unless both classes are present."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _operating_points(labels: np.ndarray, scores: np.ndarray):
    """(thresholds descending, TP(score >= t), FP(score >= t)) at every distinct score."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp, fp = np.cumsum(y), np.cumsum(1 - y)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # the last row of each distinct score
    return s[last], tp[last].astype(np.float64), fp[last].astype(np.float64)


def average_precision(labels, scores) -> float | None:
    """Step-function AP over lesion rows (label 1 = lesion, with score 0 when missed); None without lesions."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return None
    thresholds, tp, fp = _operating_points(labels, scores)
    precision = tp / (tp + fp)
    precision[thresholds == 0] = 0.0  # the missed lesions' rows are no detections
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def froc(labels, scores, num_cases: int, rates=FROC_RATES) -> dict[str, float | None]:
    """Lesion sensitivity at each number of false positives per case (PI-CAI's reading of the curve)."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    keys = [f"{r:g}" for r in rates]
    if n_pos == 0 or num_cases == 0:
        return dict.fromkeys(keys)
    _, tp, fp = _operating_points(labels, scores)
    if len(tp) >= 2:
        tp[-1], fp[-1] = tp[-2], np.inf  # the lowest score's point: the curve's end, at infinitely many FPs
    else:
        tp, fp = np.zeros(2), np.array([0.0, np.inf])
    sensitivity, fp_rate = tp / n_pos, fp / num_cases
    out = {}
    for key, rate in zip(keys, rates):
        reached = fp_rate <= rate
        out[key] = float(sensitivity[reached][-1]) if reached.any() else 0.0
    return out


def summarize(cases: list[CaseResult], matching: str = "iou") -> dict:
    rows = [row for case in cases for row in case.rows]
    labels = [label for label, _ in rows]
    scores = [score for _, score in rows]
    roc = auroc([c.case_label for c in cases], [c.case_score for c in cases])
    ap = average_precision(labels, scores)
    return {
        "auroc": roc,
        "ap": ap,
        "ranking_score": None if roc is None or ap is None else (roc + ap) / 2,
        "froc": froc(labels, scores, len(cases)),
        "num_cases": len(cases),
        "num_lesions": int(sum(labels)),
        "num_positive_cases": sum(c.case_label for c in cases),
        "num_candidates": sum(c.num_candidates for c in cases),
        "tp": sum(c.tp for c in cases),
        "fn": sum(c.fn for c in cases),
        "fp": sum(c.fp for c in cases),
        "unscored_candidates": sum(c.unscored for c in cases),
        "matching": matching,
        "protocol": ({"overlap": "IoU", "min_iou": MIN_IOU} if matching == "iou" else
                     {"max_distance_mm": DISTANCE_MM, "k": DISTANCE_K}),
    }


def evaluate_arrays(detections, masks, names=None, matching: str = "iou",
                    to_physical=None) -> tuple[dict, list[CaseResult]]:
    """Cohort metrics from in-memory arrays (z, y, x), without any file: (summary, per-case results)."""
    detections, masks = list(detections), list(masks)
    names = list(names) if names is not None else [str(i) for i in range(len(detections))]
    cases = [evaluate_case(d, m, n, matching, to_physical) for d, m, n in zip(detections, masks, names)]
    return summarize(cases, matching), cases


# ---------------------------------------------------------------- files

def case_name(path) -> str | None:
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _cases_in(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"The {what} folder '{folder}' does not exist or is not a folder.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = case_name(path)
        if name is None or not path.is_file():
            continue
        if name in found:
            raise InputError(f"Two files in {what} folder '{folder}' are case '{name}': '{found[name].name}' and "
                             f"'{path.name}'; keep one.")
        found[name] = path
    if not found:
        raise InputError(f"No images ({', '.join(SUFFIXES)}) in the {what} folder '{folder}'.")
    return found


def pair_folders(pred_dir, truth_dir) -> list[tuple[str, Path, Path]]:
    """(case, detection map, lesion mask) by case name; every case needs both files."""
    preds = _cases_in(Path(pred_dir), "detection-map")
    truths = _cases_in(Path(truth_dir), "lesion-mask")
    no_pred, no_truth = sorted(set(truths) - set(preds)), sorted(set(preds) - set(truths))
    if no_pred or no_truth:
        parts = []
        if no_pred:
            parts.append(f"no detection map in '{pred_dir}' for {len(no_pred)} case(s): {', '.join(no_pred[:10])}")
        if no_truth:
            parts.append(f"no lesion mask in '{truth_dir}' for {len(no_truth)} case(s): {', '.join(no_truth[:10])}")
        raise InputError("Cases do not pair up: " + "; ".join(parts) + ".")
    return [(name, preds[name], truths[name]) for name in sorted(truths)]


def detection_array(image: sitk.Image, name: str) -> np.ndarray:
    require_3d(image, name)
    array = sitk.GetArrayViewFromImage(image)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"The {name} holds {array.dtype} voxels; a detection map holds likelihoods in [0, 1].")
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"The {name} contains {int(np.count_nonzero(~np.isfinite(array)))} NaN or infinite voxels.")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise InputError(f"The {name} holds values from {float(array.min()):g} to {float(array.max()):g}; a detection "
                         "map holds likelihoods in [0, 1].")
    return array


def lesion_array(image: sitk.Image, name: str) -> np.ndarray:
    from .metrics import label_array

    require_3d(image, name)
    array = label_array(image, name)
    if array.size and array.min() < 0:
        raise InputError(f"The {name} holds negative values ({int(array.min())}); lesion voxels are > 0, background 0.")
    return array


def evaluate_files(pairs, matching: str = "iou") -> tuple[dict, list[CaseResult]]:
    cases = []
    for name, pred_path, truth_path in pairs:
        truth = read_image(truth_path)
        mask = lesion_array(truth, f"lesion mask '{truth_path}'")
        pred = require_same_grid(truth, read_image(pred_path),
                                 (f"lesion mask '{truth_path}'", f"detection map '{pred_path}'"))
        detection = detection_array(pred, f"detection map '{pred_path}'")
        cases.append(evaluate_case(detection, mask, name, matching, truth.TransformContinuousIndexToPhysicalPoint))
    return summarize(cases, matching), cases


def cases_csv(cases: list[CaseResult], pairs) -> str:
    paths = {name: (pred, truth) for name, pred, truth in pairs}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["case", "detection_map", "lesion_mask", "case_label", "case_score", "num_lesions",
                     "num_candidates", "tp", "fn", "fp", "unscored", "lesion_scores"])
    for c in cases:
        pred, truth = paths.get(c.name, ("", ""))
        writer.writerow([c.name, pred, truth, c.case_label, repr(c.case_score), c.num_lesions, c.num_candidates,
                         c.tp, c.fn, c.fp, c.unscored, ";".join(repr(s) for s in c.lesion_scores)])
    return out.getvalue()


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_summary(summary: dict) -> list[str]:
    f = summary["froc"]
    return [
        f"{summary['num_cases']} cases ({summary['num_positive_cases']} with lesions), "
        f"{summary['num_lesions']} lesions, "
        f"{summary['num_candidates']} candidates: TP {summary['tp']}, FN {summary['fn']}, FP {summary['fp']} "
        f"(matching: {summary['matching']})",
        f"AUROC {_fmt(summary['auroc'])}  AP {_fmt(summary['ap'])}  ranking score {_fmt(summary['ranking_score'])}",
        "FROC sensitivity at " + ", ".join(f"{k} FP/case {_fmt(v)}" for k, v in f.items()),
    ]


def evaluate_lesions_command(args) -> int:
    if args.matching not in MATCHINGS:
        raise InputError(f"Unknown --matching '{args.matching}' (choose from {', '.join(MATCHINGS)}).")
    pairs = pair_folders(args.pred_dir, args.truth_dir)
    # The folders themselves are checked by the runner (declare_paths); the files in them only now.
    refuse_overwriting({option: path for option, path in (("--json", args.json), ("--csv", args.csv)) if path},
                       [source for _, pred, truth in pairs for source in (pred, truth)])
    summary, cases = evaluate_files(pairs, args.matching)
    print("\n".join(format_summary(summary)))
    written = []
    if args.json:
        per_case = [{"case": c.name, "case_label": c.case_label, "case_score": c.case_score,
                     "num_lesions": c.num_lesions, "num_candidates": c.num_candidates, "tp": c.tp, "fn": c.fn,
                     "fp": c.fp, "unscored": c.unscored, "lesion_scores": c.lesion_scores} for c in cases]
        written.append((json.dumps({**summary, "cases": per_case}, indent=2), args.json))
    if args.csv:
        written.append((cases_csv(cases, pairs), args.csv))
    if written:
        write_all(written)
        print("written: " + ", ".join(str(path) for _, path in written))
    return 0
