"""Segmentation metrics and `prostateai evaluate`.

Per label (binary masks `pred == value`, `truth == value`):
- `dice`: 2|P∩T| / (|P| + |T|).
- surface distances, in mm using the voxel spacing: surfaces are the mask voxels with a
  face-neighbour outside the mask (image borders count as outside); for each surface voxel of
  one mask, the Euclidean distance to the nearest surface voxel of the other
  (`scipy.ndimage.distance_transform_edt(..., sampling=spacing)`).
  - `hd95_mm`: 95th percentile of BOTH directed distance sets pooled (medpy's `hd95`
    convention); `hd_mm`: their maximum (surface Hausdorff distance; it is >= SimpleITK's
    set-to-set `HausdorffDistanceImageFilter` and equal to it in most practical cases);
  - `assd_mm`: mean of the pooled distances (average symmetric surface distance).
- `volume_similarity`: 1 - ||P| - |T|| / (|P| + |T|) (Taha & Hanbury 2015), 1 = same volume.
- `abs_volume_difference_ml`: ||P| - |T|| x voxel volume, in mL; `pred_volume_ml`, `truth_volume_ml`.

Empty masks have defined values (never a crash):
- both empty: Dice 1, distances 0, volume similarity 1, `empty = "both"`;
- one empty: Dice 0, distances undefined -> None (JSON null, empty CSV cell) with
  `empty = "pred"` or `"truth"`; volume similarity 0; volume difference = the other's volume.
Cohort summaries (mean ± std) skip undefined distances and report how many were skipped.

Pred and truth must share a grid (`geometry.same_grid`, 1e-3 tolerance); otherwise `InputError`.
Both must be label maps: 3D, one value per voxel, whole numbers (float files are accepted when every
voxel is a finite whole number), and at most `MAX_LABELS` distinct non-zero values unless `--labels`
names the ones to score; anything else (a 4D series, a probability map, an intensity image) is
refused by name before any per-label work. `prostateai evaluate` never writes over an input.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ProstateAICore.commands import refuse_overwriting
from ProstateAICore.errors import InputError
from ProstateAICore.geometry import same_grid
from ProstateAICore.imageio import read_image, suffix_of, write_text

MAX_LABELS = 255  # what a uint8 label map holds; far more values means an intensity or probability image
METRICS = ("dice", "hd95_mm", "hd_mm", "assd_mm", "volume_similarity", "abs_volume_difference_ml",
           "pred_volume_ml", "truth_volume_ml")


# ---------------------------------------------------------------- single binary pair

def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; both empty -> 1.0 (perfect agreement on "nothing")."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face-neighbour outside the mask (or on the image border)."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1, constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(3, 1))
    return (padded & ~eroded)[1:-1, 1:-1, 1:-1]


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface -> truth surface, truth -> pred). Non-empty masks only."""
    s_pred, s_truth = surface(pred), surface(truth)
    # Distance maps only need the bounding box of both surfaces (+1 voxel): much faster on big grids.
    box = _bounding_box(s_pred | s_truth)
    s_pred, s_truth = s_pred[box], s_truth[box]
    to_truth = ndimage.distance_transform_edt(~s_truth, sampling=spacing_zyx)
    to_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing_zyx)
    return to_truth[s_pred], to_pred[s_truth]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    coords = np.argwhere(mask)
    lo = np.maximum(coords.min(0) - 1, 0)
    hi = np.minimum(coords.max(0) + 2, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def binary_metrics(pred: np.ndarray, truth: np.ndarray, spacing_zyx) -> dict:
    """All metrics for one binary pair (arrays in (z, y, x) order, spacing in mm in the same order)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    n_pred, n_truth = int(pred.sum()), int(truth.sum())
    result = {
        "dice": dice(pred, truth),
        "volume_similarity": 1.0 if n_pred + n_truth == 0 else 1.0 - abs(n_pred - n_truth) / (n_pred + n_truth),
        "abs_volume_difference_ml": abs(n_pred - n_truth) * voxel_ml,
        "pred_volume_ml": n_pred * voxel_ml,
        "truth_volume_ml": n_truth * voxel_ml,
        "empty": None,
    }
    if n_pred == 0 and n_truth == 0:
        result.update(hd95_mm=0.0, hd_mm=0.0, assd_mm=0.0, empty="both")
    elif n_pred == 0 or n_truth == 0:
        result.update(hd95_mm=None, hd_mm=None, assd_mm=None, empty="pred" if n_pred == 0 else "truth")
    else:
        d_pt, d_tp = surface_distances(pred, truth, spacing_zyx)
        pooled = np.concatenate([d_pt, d_tp])
        result.update(hd95_mm=float(np.percentile(pooled, 95)), hd_mm=float(pooled.max()), assd_mm=float(pooled.mean()))
    return {key: result[key] for key in METRICS + ("empty",)}


# ---------------------------------------------------------------- images and labels

def parse_labels(specs) -> dict[int, str] | None:
    """`["1", "2=TZ"]` or `["1,2=TZ"]` -> {1: "1", 2: "TZ"}; None -> every non-zero value present."""
    if not specs:
        return None
    labels = {}
    for spec in (part.strip() for item in specs for part in str(item).split(",") if part.strip()):
        value, _, name = spec.partition("=")
        try:
            value = int(value)
        except ValueError as exc:
            raise InputError(f"Label '{spec}' is not VALUE or VALUE=name with an integer VALUE.") from exc
        name = name.strip() or str(value)
        if value in labels or name in labels.values():  # results are keyed by name: one would hide the other
            raise InputError(f"Label '{spec}' repeats a value or a name given before in --labels.")
        labels[value] = name
    return labels


def label_array(image: sitk.Image, name: str = "mask") -> np.ndarray:
    """The voxels of a label map as integers, or InputError naming `name` for what is not one."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The {name} is not a 3D label map ({image.GetDimension()}D, size {tuple(image.GetSize())}, "
                         f"{image.GetNumberOfComponentsPerPixel()} value(s) per voxel).")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"The {name} holds {array.dtype} voxels; a label map holds whole numbers.")
    if not np.isfinite(array).all():
        raise InputError(f"The {name} contains {int(np.count_nonzero(~np.isfinite(array)))} NaN or infinite voxels; "
                         "a label map holds whole numbers.")
    if array.size and (np.abs(array).max() >= 2**31 or not np.array_equal(array, np.round(array))):
        raise InputError(f"The {name} holds fractional (or huge) values; it looks like a probability or intensity "
                         "image, not a label map (threshold it first).")
    return array.astype(np.int32)  # whole numbers stored as float, as some tools write label maps


def present_labels(p: np.ndarray, t: np.ndarray, names=("prediction", "reference")) -> dict[int, str]:
    """Every non-zero value of either map; refused above MAX_LABELS, before any per-label work
    (thousands of labels are an intensity image given by mistake, and would take hours to score)."""
    found = {}
    for array, name in zip((p, t), names):
        values = np.unique(array)
        values = values[values != 0]
        if len(values) > MAX_LABELS:
            raise InputError(f"The {name} has {len(values)} distinct labels (at most {MAX_LABELS} are scored "
                             "unless --labels names them); is it really a label map?")
        found.update({int(v): str(int(v)) for v in values})
    return dict(sorted(found.items())) or {1: "1"}  # both empty: score the usual foreground label so it is defined


def evaluate_images(pred: sitk.Image, truth: sitk.Image, labels: dict[int, str] | None = None,
                    names=("prediction", "reference")) -> dict:
    """Metrics per label for two label images on the same grid."""
    p, t = label_array(pred, names[0]), label_array(truth, names[1])  # what is not a label map, named, first
    if pred.GetDimension() != truth.GetDimension() or not same_grid(pred, truth):
        raise InputError(
            f"The {names[0]} and the {names[1]} are not on the same grid ({names[0]} size {pred.GetSize()}, spacing "
            f"{tuple(round(s, 4) for s in pred.GetSpacing())}; {names[1]} size {truth.GetSize()}, spacing "
            f"{tuple(round(s, 4) for s in truth.GetSpacing())}). Resample the {names[0]} onto the {names[1]} first."
        )
    if labels is None:
        labels = present_labels(p, t, names)
    spacing_zyx = tuple(float(s) for s in reversed(pred.GetSpacing()))
    return {name: {"value": value, **binary_metrics(p == value, t == value, spacing_zyx)} for value, name in labels.items()}


def evaluate_files(pred_path, truth_path, labels: dict[int, str] | None = None) -> dict:
    return evaluate_images(read_image(pred_path), read_image(truth_path), labels,
                           names=(f"prediction '{pred_path}'", f"reference '{truth_path}'"))


# ---------------------------------------------------------------- cohort

_SUFFIX_WORDS = r"(_(pred|prediction|seg|segmentation|mask|label|labels|prostate|truth|gt|reference|ref))+$"


def case_key(path) -> str:
    """Case name from a file name: extension and trailing _pred/_seg/_mask/_prostate... words removed."""
    name = Path(path).name
    name = name[: -len(suffix_of(name))] if suffix_of(name) else name
    return re.sub(_SUFFIX_WORDS, "", name, flags=re.IGNORECASE) or name


def _mask_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and suffix_of(p) in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".seg.nrrd"))


def _unique_cases(items, where: str) -> dict:
    """{case: path} from (case, path) pairs; two masks of one case are refused naming both (otherwise
    one would silently replace the other in the results)."""
    found = {}
    for case, path in items:
        if case in found:
            raise InputError(f"Two masks in {where} are case '{case}': '{found[case]}' and '{path}'; "
                             "keep one, or give the cases different names.")
        found[case] = path
    return found


def pair_folders(pred_dir, truth_dir) -> list[tuple[str, Path, Path]]:
    """Match masks by identical file name, else by case name; every reference needs a prediction."""
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for folder in (pred_dir, truth_dir):
        if not folder.is_dir():
            raise InputError(f"Folder '{folder}' does not exist.")
    preds = _mask_files(pred_dir)
    by_name = {p.name: p for p in preds}
    by_key = _unique_cases(((case_key(p), p) for p in preds), f"'{pred_dir}'")  # e.g. case.nii and case.nii.gz
    _unique_cases(((case_key(t), t) for t in _mask_files(truth_dir)), f"'{truth_dir}'")
    pairs, missing = [], []
    for truth in _mask_files(truth_dir):
        pred = by_name.get(truth.name) or by_key.get(case_key(truth))
        if pred is None:
            missing.append(truth.name)
        else:
            pairs.append((case_key(truth), pred, truth))
    if missing:
        raise InputError(f"No prediction in '{pred_dir}' for {len(missing)} reference mask(s): {', '.join(missing[:10])}.")
    if not pairs:
        raise InputError(f"No reference masks found in '{truth_dir}'.")
    return pairs


def pairs_from_csv(path) -> list[tuple[str, Path, Path]]:
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"Could not read '{path}' as a CSV list: {exc}") from exc
    if not rows or not {"pred", "truth"} <= set(rows[0]):
        raise InputError(f"'{path}' needs a header with columns pred,truth (and optionally case).")
    for number, row in enumerate(rows, start=2):
        if not row.get("pred") or not row.get("truth"):
            raise InputError(f"'{path}' line {number} has no pred or no truth path.")
    resolve = lambda p: Path(p) if Path(p).is_absolute() else path.parent / p  # noqa: E731
    pairs = [(row.get("case") or case_key(row["truth"]), resolve(row["pred"]), resolve(row["truth"])) for row in rows]
    _unique_cases(((case, truth) for case, _, truth in pairs), f"'{path}'")
    return pairs


def summarize(results: dict[str, dict]) -> dict:
    """Per label and metric: mean, std (ddof=1), median, n, n_undefined (None values skipped)."""
    summary = {}
    labels = sorted({label for r in results.values() for label in r}, key=str)
    for label in labels:
        summary[label] = {}
        for metric in METRICS:
            values = [r[label][metric] for r in results.values() if label in r]
            defined = np.array([v for v in values if v is not None], dtype=float)
            summary[label][metric] = {
                "mean": float(defined.mean()) if defined.size else None,
                "std": float(defined.std(ddof=1)) if defined.size > 1 else (0.0 if defined.size else None),
                "median": float(np.median(defined)) if defined.size else None,
                "n": int(defined.size),
                "n_undefined": len(values) - int(defined.size),
            }
    return summary


def evaluate_cohort(pairs, labels: dict[int, str] | None = None) -> tuple[dict, dict]:
    results = {}
    for case, pred, truth in pairs:
        try:
            results[case] = evaluate_files(pred, truth, labels)
        except InputError as exc:
            raise InputError(f"Case '{case}': {exc}") from exc
    return results, summarize(results)


def cohort_csv(results: dict[str, dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "label", "value", *METRICS, "empty"])
    for case, per_label in results.items():
        for label, m in per_label.items():
            writer.writerow([case, label, m["value"], *("" if m[k] is None else f"{m[k]:.6g}" for k in METRICS), m["empty"] or ""])
    return buffer.getvalue()


# ---------------------------------------------------------------- command line

def _fmt(value, digits=4, unit="") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}{unit}"


def format_case(per_label: dict) -> list[str]:
    lines = []
    for label, m in per_label.items():
        note = {"pred": "  [prediction empty: distances undefined]", "truth": "  [reference empty: distances undefined]",
                "both": "  [both empty]"}.get(m["empty"], "")
        lines.append(f"label {label}: Dice {_fmt(m['dice'])}  HD95 {_fmt(m['hd95_mm'], 2, ' mm')}  "
                     f"ASSD {_fmt(m['assd_mm'], 2, ' mm')}  VS {_fmt(m['volume_similarity'])}  "
                     f"AVD {_fmt(m['abs_volume_difference_ml'], 2, ' mL')}{note}")
    return lines


def format_summary(summary: dict, n_cases: int) -> list[str]:
    lines = [f"{n_cases} cases (mean ± std)"]
    for label, metrics in summary.items():
        parts = []
        for key, name, digits in (("dice", "Dice", 4), ("hd95_mm", "HD95 mm", 2), ("assd_mm", "ASSD mm", 2),
                                  ("volume_similarity", "VS", 4), ("abs_volume_difference_ml", "AVD mL", 2)):
            s = metrics[key]
            text = f"{name} {_fmt(s['mean'], digits)} ± {_fmt(s['std'], digits)}"
            if s["n_undefined"]:
                text += f" ({s['n_undefined']} undefined)"
            parts.append(text)
        lines.append(f"label {label}: " + "  ".join(parts))
    return lines


def evaluate_command(args) -> int:
    labels = parse_labels(args.labels)
    single = bool(args.pred or args.truth)
    cohort = bool(args.pred_dir or args.truth_dir or args.list)
    if single == cohort:
        raise InputError("Give either --pred and --truth (one case) or --pred-dir/--truth-dir or --list (a cohort).")
    if single:
        if not (args.pred and args.truth):
            raise InputError("--pred and --truth are both needed.")
        if args.json:
            refuse_overwriting({"--json": Path(args.json)}, [args.pred, args.truth])
        result = evaluate_files(args.pred, args.truth, labels)
        print("\n".join(format_case(result)))
        if args.json:
            write_text(json.dumps({"pred": str(args.pred), "truth": str(args.truth), "labels": result}, indent=2), args.json)
        return 0
    if args.list:
        pairs = pairs_from_csv(args.list)
    elif args.pred_dir and args.truth_dir:
        pairs = pair_folders(args.pred_dir, args.truth_dir)
    else:
        raise InputError("--pred-dir and --truth-dir are both needed.")
    csv_path = Path(args.csv or (Path(args.json).with_suffix(".csv") if args.json else "evaluation.csv"))
    outputs = {"--csv" if args.csv else "--csv (default)": csv_path, **({"--json": Path(args.json)} if args.json else {})}
    masks = [mask for _, pred, truth in pairs for mask in (pred, truth)]
    refuse_overwriting(outputs, [args.list, args.pred_dir, args.truth_dir, *masks])  # before any work
    results, summary = evaluate_cohort(pairs, labels)
    print("\n".join(format_summary(summary, len(results))))
    write_text(cohort_csv(results), csv_path)
    print(f"per-case CSV: {csv_path}")
    if args.json:
        write_text(json.dumps({"summary": summary, "cases": results}, indent=2), args.json)
    return 0
