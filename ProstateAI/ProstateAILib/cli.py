"""Segmentation sub-commands: `segment`, `grow`, `train`, `calibrate-spacing` and `evaluate`.

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
    _register_grow(subparsers)
    _register_train(subparsers)
    _register_calibrate(subparsers)
    _register_evaluate(subparsers)
    _register_evaluate_lesions(subparsers)
    _register_export(subparsers)


# ---------------------------------------------------------------- segment

def _register_segment(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment prostate gland and zones (PZ/TZ) on a T2 MRI",
        description="Whole gland, then transition zone (T2 + gland mask), PZ = gland - TZ. Inputs are a DICOM "
                    "study folder (--study: the axial T2, ADC and highest-b DWI are chosen from it and the choice "
                    "is printed), or DICOM series folders or NIfTI/NRRD/MHA files; ADC/HBV on other grids are "
                    "resampled onto the T2. Inputs from different patients or studies are refused. "
                    "Writes OUT/prostate.nii.gz, zones.nii.gz (1 = PZ, 2 = TZ), probabilities/*.nii.gz, "
                    "segmentation.seg.nrrd and report.json, all on the T2 grid. With ADC and HBV, csPCa lesion "
                    "candidates too (a rule-based baseline, no training): detection_map.nii.gz, lesions.nii.gz, "
                    "lesions.json and segments 'Lesion N'.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", metavar="DIR",
                        help="DICOM study folder as exported from PACS or copied from a CD (nested or flat, any "
                             "file names, extra series): the series are classified from their headers and chosen")
    source.add_argument("--t2", help="axial T2: DICOM folder or image file")
    p.add_argument("--adc", help="ADC map (optional; with --t2)")
    p.add_argument("--hbv", help="high-b-value DWI (optional; with --t2)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="segment inputs from different patients (PatientID) or studies (StudyInstanceUID) "
                        "anyway (else refused); the report notes it")
    p.add_argument("--psa", type=commands.positive_float, default=None, metavar="NG_PER_ML",
                   help="serum PSA in ng/mL: the report gets the PSA density (PSA / prostate volume in mL)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="gland model: catalog name or model .pt file (default: catalog's)")
    p.add_argument("--zones-model", default=None, help="zone model: catalog name or .pt file (default: catalog's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-tta", action="store_true", help="skip flip test-time augmentation (about 2x faster)")
    p.add_argument("--threads", type=commands.bounded_int(1, 256, "threads"), default=None,
                   help="CPU threads for torch (default: torch's)")
    p.add_argument("--allow-irregular", action="store_true",
                   help="resample a DICOM series with missing/uneven slices onto a regular grid (else refused)")
    p.add_argument("--no-lesions", action="store_true",
                   help="skip the csPCa lesion candidates (otherwise detected whenever ADC and HBV are given)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--localiser", default="auto",
                       help="coarse gland localiser (catalog name or .pt file; default: the catalog's): the gland "
                            "model then runs only around the gland, so time does not grow with the field of view")
    where.add_argument("--no-localise", action="store_true", help="run the gland model over the whole volume")
    p.set_defaults(func=_segment)
    commands.declare_paths(p, inputs=["study", "t2", "adc", "hbv", "model", "zones_model"], output_dirs=["out"])


def _segment(args) -> int:
    from . import pipeline

    study = None
    if args.study is not None:
        from ProstateAICore.errors import InputError

        from . import study as studies

        if args.adc or args.hbv:
            raise InputError("--adc/--hbv go with --t2; with --study the ADC and DWI are chosen from the folder.")
        study = studies.select_series(args.study)
        studies.check_same_patient(study.identities(), args.allow_mismatch)  # refuse before printing the choice
        for line in study.lines():
            print(line, flush=True)
    report = pipeline.run(args.t2, args.out, adc=args.adc, hbv=args.hbv, gland_model=args.model,
                          zones_model=args.zones_model, device=args.device, tta=not args.no_tta,
                          progress=args.progress_fn, threads=args.threads, allow_irregular=args.allow_irregular,
                          study=study, allow_mismatch=args.allow_mismatch, psa=args.psa, lesions=not args.no_lesions,
                          localiser=None if args.no_localise else args.localiser)
    lesions = report.get("lesions", {})
    if lesions.get("status") == "detected":
        passed = lesions["operating_points"]["balanced"]["lesions"]
        print(f"lesions: {lesions['candidates']} candidate(s), patient score {lesions['patient_score']:.2f}, "
              f"{len(passed)} at the balanced operating point -> {args.out}/lesions.json")
    elif lesions.get("status") == "skipped":
        print(f"note: {lesions['reason']}")
    v = report["volumes_ml"]
    density = ""
    if "psa_density_ng_ml2" in report:
        density = f", PSA {report['psa_ng_ml']:g} ng/mL -> density {report['psa_density_ng_ml2']:.3f} ng/mL/mL"
    print(f"prostate {v['prostate']:.1f} mL (PZ {v['PZ']:.1f}, TZ {v['TZ']:.1f}){density} in "
          f"{report['timings_s']['total']:.1f} s -> {args.out}")
    for note in report.get("notes", []):
        if "--allow-mismatch" in note:
            print(f"note: {note}")
    return 0


# ---------------------------------------------------------------- grow

def _register_grow(subparsers) -> None:
    p = subparsers.add_parser(
        "grow", help="grow a lesion mask from one seed point (click-to-grow)",
        description="Threshold level set grown from the seed independently on the T2, the high-b DWI and the "
                    "inverted ADC (each resampled onto the T2), keeping the voxels found on at least 2 of them "
                    "(Pellicer-Valero 2022); with only a T2, the T2 alone. Writes a 0/1 mask on the T2 grid.",
    )
    p.add_argument("--t2", required=True, help="axial T2: DICOM folder or image file")
    p.add_argument("--adc", help="ADC map (optional)")
    p.add_argument("--hbv", help="high-b-value DWI (optional)")
    p.add_argument("--gland", help="gland mask on the T2 grid (optional): limits the mask to the gland and 4 mm "
                                   "around it; a seed outside it gives a warning")
    seed = p.add_mutually_exclusive_group(required=True)
    seed.add_argument("--seed-lps", nargs=3, type=commands.finite_float, metavar=("X", "Y", "Z"),
                      help="seed in LPS mm (ITK/DICOM patient coordinates)")
    seed.add_argument("--seed-ras", nargs=3, type=commands.finite_float, metavar=("R", "A", "S"),
                      help="seed in RAS mm (3D Slicer's coordinates)")
    p.add_argument("--out", required=True, help="mask to write (.nii.gz, .nrrd, .mha)")
    p.set_defaults(func=_grow)
    commands.declare_paths(p, inputs=["t2", "adc", "hbv", "gland"], outputs=["out"])


def _grow(args) -> int:
    import time

    from ProstateAICore.imageio import read_image, write_image

    from . import grow, pipeline

    start = time.perf_counter()
    seed = grow.seed_to_lps(args.seed_lps, args.seed_ras)
    t2, _ = pipeline._read(args.t2, "T2")
    extra = {name: pipeline._read(path, name)[0] if path else None for name, path in (("ADC", args.adc), ("HBV", args.hbv))}
    gland = read_image(args.gland) if args.gland else None
    result = grow.grow(t2, seed, adc=extra["ADC"], hbv=extra["HBV"], gland=gland)
    for warning in result.warnings:
        print(f"prostateai grow: warning: {warning}", file=sys.stderr)
    if result.sequences == ["T2"]:
        print("note: only the T2 was given: the mask is the T2 level set alone (no vote between sequences)")
    write_image(result.mask, args.out)
    rule = f"kept where >= {result.votes_needed} agree" if len(result.sequences) > 1 else "T2 alone"
    print(f"grown on {', '.join(result.sequences)} ({rule}): {result.volume_ml:.3f} mL in "
          f"{time.perf_counter() - start:.1f} s -> {args.out}")
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
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to train (default 40; with --resume: the run's own count, or more to extend it)")
    p.add_argument("--iterations", type=int, default=150, help="iterations per epoch")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", default=None, help="patch size z,y,x in working-grid voxels (default 16,80,80)")
    p.add_argument("--spacing", default=None,
                   help="working grid x,y,z in mm (default 1.5,1.5,3.6; the localiser preset uses 4,4,4)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--val-every", type=int, default=2, help="validate every N epochs")
    p.add_argument("--val-overlap", type=float, default=0.25, help="window overlap for validation")
    p.add_argument("--no-val-tta", action="store_true", help="validate without flip TTA (faster, noisier selection)")
    p.add_argument("--init", default=None, help="start from this model file's weights (fine-tuning), new optimizer")
    p.add_argument("--ema", type=float, default=0.0,
                   help="validate and keep an exponential moving average of the weights with this decay "
                        "(e.g. 0.998; default 0 = off)")
    p.add_argument("--augment", choices=["standard", "bigaug"], default="standard",
                   help="augmentation profile: standard (rotation, zoom, flips, intensity, noise) or bigaug (adds "
                        "voxel-size jitter, elastic deformation, bias field, contrast, Rician noise, blur, "
                        "slice-thickness simulation and sharpening; see dataset.AUGMENT_PROFILES)")
    p.add_argument("--features", default=None, help="channels per level, e.g. 16,32,64,96,128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and SimpleITK")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda")
    p.add_argument("--max-cases", type=int, default=None, help="use only the first N cases (debugging)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (optimizer state included)")
    p.add_argument("--preset", choices=["lesions", "localiser"], default=None,
                   help="lesions: the PI-CAI/nnU-Net lesion layout (imagesTr/<case>_0000..0002 T2, ADC, HBV, "
                        "optionally _0003 PZ and _0004 TZ masks; labelsTr ISUP values): sets --channels, --labels "
                        "background,ISUP2,ISUP3,ISUP>=4 and --label-map 1=0,2=1,3=2,4=3,5=3 (each still overridable). "
                        "localiser: the coarse gland localiser (4 mm grid, small network, patch 16,64,64) that "
                        "`segment` uses to run the fine model only around the gland")
    p.add_argument("--channels", default=None,
                   help="input channel names, comma-separated, T2 first (default T2); names ending in _mask are "
                        "masks (not normalised), e.g. T2,prostate_mask for the zone model")
    p.add_argument("--labels", default=None, help="output label names, comma-separated (default background,prostate)")
    p.add_argument("--label-map", default=None,
                   help="rename reference label values, e.g. 1=0,2=1 keeps only TZ of a zones mask")
    p.add_argument("--task", default=None, help="task description stored in the model")
    p.add_argument("--tune-only", action="store_true",
                   help="only tune the probability threshold of OUT/model.pt on its validation cases")
    p.set_defaults(func=_train)


def _train_numbers(args) -> tuple[tuple | None, tuple | None, dict, dict]:
    """--patch, --spacing, --features and --label-map parsed (None: not given), and the counts checked: a typo is one clear line
    (exit 2), not a traceback from deep inside the training loop."""
    from ProstateAICore.errors import InputError

    for name in ("epochs", "iterations", "batch", "val_every", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    if not (args.lr > 0 and 0 <= args.val_fraction < 1 and 0 <= args.val_overlap < 1):
        raise InputError("--lr must be > 0, and --val-fraction and --val-overlap between 0 and 1 (1 excluded).")
    patch = None
    if args.patch is not None:
        try:
            patch = _triple(args.patch, int)
            if min(patch) < 1:
                raise ValueError
        except ValueError:
            raise InputError(f"--patch must be three positive whole numbers z,y,x (e.g. 16,80,80), got '{args.patch}'.") from None
    spacing = None
    if args.spacing is not None:
        try:
            spacing = _triple(args.spacing, float)
            if not all(0 < v < 50 for v in spacing):
                raise ValueError
        except ValueError:
            raise InputError(f"--spacing must be three sizes in mm x,y,z (e.g. 1.5,1.5,3.6), got '{args.spacing}'.") from None
    net = {}
    if args.features:
        try:
            net["features"] = [int(v) for v in args.features.split(",")]
            if min(net["features"]) < 1:
                raise ValueError
        except ValueError:
            raise InputError(f"--features must be positive whole numbers, e.g. 16,32,64,96,128, got '{args.features}'.") from None
    label_map = {}
    if args.label_map:
        try:
            label_map = {int(a): int(b) for a, b in (item.split("=") for item in args.label_map.split(","))}
        except ValueError:
            raise InputError(f"--label-map must be OLD=NEW integer pairs, e.g. 1=0,2=1, got '{args.label_map}'.") from None
    return patch, spacing, net, label_map


def _train(args) -> int:
    from . import dataset, train

    if args.tune_only:
        train.finalize_run(args.out, args.data, args.threads or 2, log=lambda m: print(m, flush=True))
        return 0
    patch, spacing, net, label_map = _train_numbers(args)
    # --resume keeps the checkpoint's epoch count unless --epochs raises it (run_training takes the larger).
    epochs = args.epochs if args.epochs is not None else (1 if args.resume else 40)
    preset = train.preset_settings(args.preset, args.data) if args.preset and not args.resume else {}
    channels = args.channels or ",".join(preset.get("channels", ("T2",)))
    labels = args.labels or ",".join(preset.get("labels", ("background", "prostate")))
    label_map = label_map if args.label_map else preset.get("label_map", {})
    task = args.task or preset.get("task")
    patch = patch or preset.get("patch") or train.TrainConfig.patch
    spacing = spacing or preset.get("spacing", train.TrainConfig.spacing)
    net = {**preset.get("net", {}), **net}
    cfg = train.TrainConfig(
        data=args.data, out=args.out, epochs=epochs, iterations=args.iterations, batch=args.batch,
        patch=patch, spacing=tuple(spacing), lr=args.lr, val_fraction=args.val_fraction, val_every=args.val_every,
        val_overlap=args.val_overlap, seed=args.seed, threads=args.threads, device=args.device,
        max_cases=args.max_cases, net=net, val_tta=not args.no_val_tta, init=args.init, ema=args.ema,
        augment=dataset.augment_profile(args.augment),
        channels=tuple(c.strip() for c in channels.split(",")),
        labels=tuple(c.strip() for c in labels.split(",")),
        label_map=label_map,
        **({"task": task} if task else {}),
        command=" ".join(shlex.quote(a) for a in ["prostateai"] + sys.argv[1:]),
    )
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # log lines replace the terminal progress bar
    result = train.run_training(cfg, resume=args.resume, progress=args.progress_fn,
                                log=lambda m: print(clear + m, flush=True))
    best = result["best"]
    if best.get("per_case") or best["dice"] >= 0:
        print(f"best validation Dice {best['dice']:.4f} at epoch {best['epoch']}; model: {result['out']}/model.pt")
    else:  # no validation cases: the checkpoint kept is the one with the lowest training loss
        print(f"no validation cases: model = lowest training loss {-best['dice']:.4f} (epoch {best['epoch']}); "
              f"model: {result['out']}/model.pt")
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
    commands.declare_paths(p, inputs=["data", "split_from"], outputs=["out"])


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
                   help="labels to score, as VALUE or VALUE=name, space- or comma-separated (e.g. 1,2 or 1=PZ 2=TZ; "
                        "default: every non-zero value present, at most 255 distinct values)")
    p.add_argument("--json", help="write the results as JSON here (never over an input)")
    p.add_argument("--csv", help="cohort mode: per-case CSV (default: next to --json, or evaluation.csv; "
                                 "never over an input)")
    p.set_defaults(func=_evaluate)
    # The runner refuses these when one is another; the default CSV and the masks named inside --list or
    # the folders are only known at run time, so metrics.evaluate_command checks those.
    commands.declare_paths(p, inputs=["pred", "truth", "pred_dir", "truth_dir", "list"], outputs=["json", "csv"])


def _evaluate(args) -> int:
    from . import metrics

    return metrics.evaluate_command(args)


# ---------------------------------------------------------------- evaluate-lesions

def _register_evaluate_lesions(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate-lesions", help="lesion detection metrics (PI-CAI: AUROC, AP, ranking score, FROC)",
        description="Score lesion detection maps against lesion masks with the PI-CAI protocol. --pred-dir holds "
                    "detection maps (float, [0, 1]: each candidate a connected region filled with its likelihood, 0 "
                    "elsewhere), --truth-dir lesion masks (whole numbers, lesion voxels > 0, e.g. ISUP grades), "
                    "paired by file name without .nii.gz/.nii/.mha/.nrrd. A candidate hits a lesion at IoU >= 0.1 "
                    "(--matching iou, PI-CAI) or at a centroid distance < 15 mm (--matching distance, score "
                    "p + 2(1 - d/15)). Reports patient-level AUROC (case score = maximum of the map), lesion-level "
                    "AP, ranking score (AUROC + AP)/2 and FROC sensitivity at 0.5, 1 and 2 false positives per case.",
    )
    p.add_argument("--pred-dir", required=True, help="folder of detection maps")
    p.add_argument("--truth-dir", required=True, help="folder of lesion masks")
    p.add_argument("--json", help="write the metrics (and per-case results) as JSON here (never over an input)")
    p.add_argument("--csv", help="write one row per case here (never over an input)")
    p.add_argument("--matching", choices=["iou", "distance"], default="iou",
                   help="iou: PI-CAI (IoU >= 0.1, default); distance: centroids < 15 mm apart (Pellicer-Valero 2022)")
    p.set_defaults(func=_evaluate_lesions)
    # The files inside the folders are only known at run time: lesion_metrics checks those.
    commands.declare_paths(p, inputs=["pred_dir", "truth_dir"], outputs=["json", "csv"])


def _evaluate_lesions(args) -> int:
    from . import lesion_metrics

    return lesion_metrics.evaluate_lesions_command(args)


# ---------------------------------------------------------------- export

def _register_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a segmentation as DICOM SEG, Slicer .seg.nrrd or NIfTI label maps",
        description="SEG is a .seg.nrrd (written by `segment` or saved by Slicer after review) or a label map "
                    "(.nii.gz, .nrrd, .mha) with its JSON label table (X.json beside X.nii.gz, as --format nifti "
                    "writes) or --labels. Segments are put onto the T2's exact voxel grid. dicom-seg references the "
                    "T2's DICOM files (--t2 must be its DICOM folder), with SNOMED CT codes, the model of each AI "
                    "segment (from --report) and MANUAL for --corrected segments. nifti writes one label map per "
                    "non-overlapping layer (OUT = the gland, OUT-stem.layer1.nii.gz = the zones) and OUT-stem.json.",
    )
    p.add_argument("seg", metavar="SEG", help="segmentation: .seg.nrrd, or a label map (+ label table)")
    p.add_argument("--t2", required=True, help="the T2 the segmentation belongs to: DICOM folder (needed for "
                                               "dicom-seg) or image file")
    p.add_argument("--format", required=True, choices=["dicom-seg", "seg.nrrd", "nifti"])
    p.add_argument("--out", required=True, help="output file: X.dcm, X.seg.nrrd or X.nii.gz")
    p.add_argument("--labels", nargs="+", default=None, metavar="VALUE=NAME",
                   help="names of a bare label map's values, e.g. 1=PZ 2=TZ (Prostate, PZ, TZ get their SNOMED codes)")
    p.add_argument("--label-table", default=None, help="JSON label table of a label-map SEG (default: X.json beside X)")
    p.add_argument("--report", default=None,
                   help="report.json of the `segment` run that made SEG: the models named in a DICOM SEG "
                        "(default: report.json beside SEG, when there is one)")
    p.add_argument("--corrected", nargs="+", default=[], metavar="NAME",
                   help="segments a person corrected, e.g. --corrected PZ (DICOM SEG: algorithm type MANUAL)")
    p.set_defaults(func=_export)
    commands.declare_paths(p, inputs=["seg", "t2", "label_table", "report"], outputs=["out"])


def _export(args) -> int:
    from pathlib import Path

    from ProstateAICore.imageio import read_json

    from . import export, metrics

    loaded = export.read_segments(args.seg, metrics.parse_labels(args.labels), args.label_table)
    algorithms = dict(loaded.algorithms)
    report = Path(args.report) if args.report else Path(args.seg).parent / "report.json"
    if args.report or report.is_file():
        found = export.algorithms_from_report(read_json(report, "report"))
        algorithms = {**algorithms, **found} if args.report else {**found, **algorithms}
    names = {segment.name.lower(): segment.name for segment in loaded.segments}
    corrected = set(loaded.corrected)
    for name in (part.strip() for item in args.corrected for part in item.split(",") if part.strip()):
        corrected.add(names.get(name.lower(), name))  # an unknown name is refused by export_segmentation
    # Files written beside OUT (nifti: more label maps and the table) must not be inputs either.
    outputs = [Path(args.out)]
    if args.format == "nifti":
        outputs = export.label_map_paths(args.out, len(loaded.segments)) + [export.table_path(args.out)]
    commands.refuse_overwriting({f"output '{out.name}'": out for out in outputs},
                                [args.seg, args.t2, args.label_table, report])
    written = export.export_segmentation(loaded.segments, args.t2, args.format, args.out, algorithms, corrected)
    print(f"{len(loaded.segments)} segment(s) ({', '.join(s.name for s in loaded.segments)}) -> "
          + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Only this module's sub-commands (what the ProstateAI Slicer module runs as a job)."""
    return commands.main([register], argv, "python -m ProstateAILib.cli", "ProstateAI prostate segmentation, training and evaluation.")


if __name__ == "__main__":
    commands.exit_fast(main())
