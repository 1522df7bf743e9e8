"""Segmentation sub-commands: `segment`, `train`, `calibrate-spacing` and `evaluate`.

torch is imported lazily inside the command functions so other sub-commands stay fast.
"""

from __future__ import annotations

import shlex
import sys

from ProstateAICore import commands


def _triple(text: str, kind=float) -> tuple:
    parts = [kind(v) for v in text.replace("x", ",").split(",") if v.strip()]
    if len(parts) != 3:
        raise ValueError(text)
    return tuple(parts)


def register(subparsers) -> None:
    _register_segment(subparsers)
    _register_train(subparsers)
    _register_calibrate(subparsers)
    _register_evaluate(subparsers)


# ---------------------------------------------------------------- segment

def _register_segment(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment prostate gland and zones (PZ/TZ) on a T2 MRI",
        description="Whole gland, then transition zone (T2 + gland mask), PZ = gland - TZ. Inputs are DICOM "
                    "series folders or NIfTI/NRRD/MHA files; ADC/HBV on other grids are resampled onto the T2. "
                    "Writes OUT/prostate.nii.gz, zones.nii.gz (1 = PZ, 2 = TZ), probabilities/*.nii.gz, "
                    "segmentation.seg.nrrd and report.json, all on the T2 grid.",
    )
    p.add_argument("--t2", required=True, help="axial T2: DICOM folder or image file")
    p.add_argument("--adc", help="ADC map (optional)")
    p.add_argument("--hbv", help="high-b-value DWI (optional)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="gland model: catalog name or model .pt file (default: catalog's)")
    p.add_argument("--zones-model", default=None, help="zone model: catalog name or .pt file (default: catalog's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-tta", action="store_true", help="skip flip test-time augmentation (about 2x faster)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.set_defaults(func=_segment)


def _segment(args) -> int:
    from . import pipeline

    report = pipeline.run(args.t2, args.out, adc=args.adc, hbv=args.hbv, gland_model=args.model,
                          zones_model=args.zones_model, device=args.device, tta=not args.no_tta,
                          progress=args.progress_fn, threads=args.threads)
    v = report["volumes_ml"]
    print(f"prostate {v['prostate']:.1f} mL (PZ {v['PZ']:.1f}, TZ {v['TZ']:.1f}) in "
          f"{report['timings_s']['total']:.1f} s -> {args.out}")
    return 0


# ---------------------------------------------------------------- train

def _register_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the segmentation network",
        description="Train the prostate segmentation network. DATA is a folder of <case>_t2.nii.gz + "
                    "<case>_prostate.nii.gz pairs, an nnU-Net/MSD raw folder (imagesTr/ + labelsTr/) or a JSON "
                    "list [{\"image\": ..., \"label\": ..., \"group\": ...}].",
    )
    p.add_argument("--data", required=True, help="dataset folder or JSON list")
    p.add_argument("--out", required=True, help="run folder (checkpoints, model.pt, history.csv, learning_curve.png)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--iterations", type=int, default=150, help="iterations per epoch")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", default="16,80,80", help="patch size z,y,x in working-grid voxels")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--val-every", type=int, default=2, help="validate every N epochs")
    p.add_argument("--val-overlap", type=float, default=0.25, help="window overlap for validation")
    p.add_argument("--no-val-tta", action="store_true", help="validate without flip TTA (faster, noisier selection)")
    p.add_argument("--init", default=None, help="start from this model file's weights (fine-tuning), new optimizer")
    p.add_argument("--ema", type=float, default=0.0,
                   help="validate and keep an exponential moving average of the weights with this decay "
                        "(e.g. 0.998; default 0 = off)")
    p.add_argument("--features", default=None, help="channels per level, e.g. 16,32,64,96,128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and SimpleITK")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")
    p.add_argument("--max-cases", type=int, default=None, help="use only the first N cases (debugging)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (optimizer state included)")
    p.add_argument("--channels", default="T2",
                   help="input channel names, comma-separated, T2 first; names ending in _mask are masks "
                        "(not normalised), e.g. T2,prostate_mask for the zone model")
    p.add_argument("--labels", default="background,prostate", help="output label names, comma-separated")
    p.add_argument("--label-map", default=None,
                   help="rename reference label values, e.g. 1=0,2=1 keeps only TZ of a zones mask")
    p.add_argument("--task", default=None, help="task description stored in the model")
    p.add_argument("--tune-only", action="store_true",
                   help="only tune the probability threshold of OUT/model.pt on its validation cases")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from . import train

    if args.tune_only:
        train.finalize_run(args.out, args.data, args.threads or 2, log=lambda m: print(m, flush=True))
        return 0
    net = {}
    if args.features:
        net["features"] = [int(v) for v in args.features.split(",")]
    cfg = train.TrainConfig(
        data=args.data, out=args.out, epochs=args.epochs, iterations=args.iterations, batch=args.batch,
        patch=_triple(args.patch, int), lr=args.lr, val_fraction=args.val_fraction, val_every=args.val_every,
        val_overlap=args.val_overlap, seed=args.seed, threads=args.threads, device=args.device,
        max_cases=args.max_cases, net=net, val_tta=not args.no_val_tta, init=args.init, ema=args.ema,
        channels=tuple(c.strip() for c in args.channels.split(",")),
        labels=tuple(c.strip() for c in args.labels.split(",")),
        label_map={int(a): int(b) for a, b in (item.split("=") for item in args.label_map.split(","))}
        if args.label_map else {},
        **({"task": args.task} if args.task else {}),
        command=" ".join(shlex.quote(a) for a in ["prostateai"] + sys.argv[1:]),
    )
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # log lines replace the terminal progress bar
    result = train.run_training(cfg, resume=args.resume, progress=args.progress_fn,
                                log=lambda m: print(clear + m, flush=True))
    best = result["best"]
    print(f"best validation Dice {best['dice']:.4f} at epoch {best['epoch']}; model: {result['out']}/model.pt")
    return 0


# ---------------------------------------------------------------- calibrate-spacing

def _register_calibrate(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate-spacing", help="estimate voxel sizes for a dataset whose header spacing is nominal",
        description="For data such as PROMISE12 whose files carry a nominal voxel size: per acquisition group "
                    "(matrix size + scanner range), the spacing that gives the group's median gland bounding box "
                    "a typical size. Writes a JSON dataset list for `prostateai train --data` with a 'spacing' per "
                    "case. With --split-from, only that model's training cases are measured.",
    )
    p.add_argument("--data", required=True, help="dataset folder or JSON list (labelled)")
    p.add_argument("--out", required=True, help="JSON dataset list to write")
    p.add_argument("--split-from", default=None,
                   help="model file: calibrate on its training cases only (its validation cases are not measured)")
    p.add_argument("--reference-mm", default=None,
                   help="typical gland size 'INPLANE,CC' in mm (default: dataset.GLAND_REFERENCE_MM)")
    p.set_defaults(func=_calibrate)


def _reference_mm(text: str) -> tuple[float, float]:
    from ProstateAICore.errors import InputError

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or not all(v > 0 for v in values):
        raise InputError(f"--reference-mm must be two positive sizes in mm, 'INPLANE,CC' (e.g. 48,48), got '{text}'.")
    return values


def _calibrate(args) -> int:
    import json
    from pathlib import Path

    from . import dataset
    from ProstateAICore.imageio import write_text

    cases = dataset.assign_groups(dataset.discover_cases(args.data))
    measured = cases
    if args.split_from:  # the model's validation cases must exist here and are not measured
        from .models import read_model_file
        from .train import split_of_model

        _, metadata = read_model_file(args.split_from)
        measured, _ = split_of_model(metadata, args.split_from, cases, log=lambda message: None)
    reference = _reference_mm(args.reference_mm) if args.reference_mm else dataset.GLAND_REFERENCE_MM
    table = dataset.calibrate_group_spacing(measured, reference)
    for case in cases:  # paths absolute: the list may be written anywhere
        case.images = [str(Path(p).resolve()) for p in case.images]
        case.label = str(Path(case.label).resolve())
    document = {"training": dataset.calibrated_dataset(cases, table),
                "spacing_calibration": {"reference_mm": list(reference), "measured_cases": [c.name for c in measured],
                                        "groups": table}}
    write_text(json.dumps(document, indent=1), args.out)
    for group, row in table.items():
        print(f"{group}: spacing {row['spacing']} mm from {row['cases']} case(s)")
    missing = sorted({c.group for c in cases} - set(table))
    if missing:
        print(f"not calibrated (no measured case): {', '.join(missing)}")
    print(f"{len(cases)} cases -> {args.out}")
    return 0


# ---------------------------------------------------------------- evaluate

def _register_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="compare predicted and reference masks (Dice, HD95, ASSD, volumes)",
        description="Per-label Dice, 95th-percentile Hausdorff distance, average symmetric surface distance "
                    "(mm, spacing-aware), volume similarity and absolute volume difference (mL). Single case "
                    "(--pred/--truth) or a cohort (--pred-dir/--truth-dir or --list CSV with columns pred,truth[,case]).",
    )
    p.add_argument("--pred", help="predicted mask")
    p.add_argument("--truth", help="reference mask")
    p.add_argument("--pred-dir", help="folder of predicted masks (matched to --truth-dir by case name)")
    p.add_argument("--truth-dir", help="folder of reference masks")
    p.add_argument("--list", help="CSV with columns pred,truth and optionally case")
    p.add_argument("--labels", nargs="+", default=None,
                   help="labels to score, as VALUE or VALUE=name (default: every non-zero value present)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--csv", help="cohort mode: per-case CSV (default: next to --json, or evaluation.csv)")
    p.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from . import metrics

    return metrics.evaluate_command(args)


def main(argv: list[str] | None = None) -> int:
    """Only this module's sub-commands (what the ProstateAI Slicer module runs as a job)."""
    return commands.main([register], argv, "python -m ProstateAILib.cli", "ProstateAI prostate segmentation, training and evaluation.")


if __name__ == "__main__":
    commands.exit_fast(main())
