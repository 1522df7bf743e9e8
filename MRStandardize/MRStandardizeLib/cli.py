"""MR sub-commands of `prostateai`: n4, nyul (fit / apply), normalize, denoise (+ register, added separately).

Each sub-command is added by its own small function listed in COMMANDS (registration's is
`_register_registration`). Inputs are a DICOM folder or a NIfTI / NRRD / MHA file; every output
is written atomically and only after all the work succeeded, so an error or a cancel leaves no
output file behind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk
from ProstateAICore import commands, imageio
from ProstateAICore.errors import InputError

WRITABLE_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


# --- shared helpers ----------------------------------------------------------------------------


def read(path: str | None, what: str = "image") -> sitk.Image | None:
    if path is None:
        return None
    image = imageio.read_image(path)
    imageio.require_3d(image, f"{what} '{path}'")
    return image


def check_image_output(path: str | None, option: str = "OUT") -> None:
    """Reject an unsupported output name before doing minutes of work."""
    if path is not None and imageio.suffix_of(path) not in WRITABLE_IMAGE_SUFFIXES:
        raise InputError(f"{option} '{path}': unsupported image format; use .nii.gz, .nii, .nrrd or .mha.")


def report(message: str) -> None:
    print(message, flush=True)


# --- n4 ----------------------------------------------------------------------------------------


def add_n4(subparsers) -> None:
    p = subparsers.add_parser("n4", help="N4 bias-field correction of an MR volume")
    p.add_argument("input", metavar="IN", help="DICOM folder or NIfTI/NRRD/MHA file")
    p.add_argument("output", metavar="OUT", help="corrected image (float32), e.g. t2_n4.nii.gz")
    p.add_argument("--quality", choices=("preview", "full"), default="full",
                   help="preset: preview (shrink 4, few iterations) or full (shrink 2); default full")
    p.add_argument("--shrink", type=commands.bounded_int(1, 16, "shrink factor"), help="shrink factor (overrides the preset)")
    p.add_argument("--mask", help="foreground label map on the image grid (default: Otsu)")
    p.add_argument("--field", help="also write the bias field (float32) here")
    p.add_argument("--iterations", type=commands.bounded_int(1, 10000, "iterations"), nargs="+", metavar="N",
                   help="iterations per fitting level, e.g. 50 50 30")
    p.add_argument("--convergence", type=commands.positive_float, help="convergence threshold (overrides the preset)")
    p.add_argument("--spline-distance", type=commands.positive_float, metavar="MM", help="B-spline control point distance in mm")
    p.set_defaults(func=run_n4)
    commands.declare_paths(p, inputs=["input", "mask"], outputs=["output", "field"])


def run_n4(args) -> int:
    from .n4 import n4_correct

    check_image_output(args.output)
    check_image_output(args.field, "--field")
    image, mask = read(args.input), read(args.mask, "mask")
    result = n4_correct(
        image, mask, quality=args.quality, progress=args.progress_fn, shrink_factor=args.shrink,
        iterations=tuple(args.iterations) if args.iterations else None,
        convergence_threshold=args.convergence, spline_distance_mm=args.spline_distance,
    )
    outputs = [(result.corrected, args.output)] + ([(result.bias_field, args.field)] if args.field else [])
    imageio.write_all(outputs)
    report(f"N4 ({args.quality}, shrink {list(result.shrink_factors)}): {result.seconds:.1f} s, "
           f"iterations per level {result.iterations} -> {args.output}")
    return 0


# --- nyul --------------------------------------------------------------------------------------


def add_nyul(subparsers) -> None:
    p = subparsers.add_parser("nyul", help="Nyul & Udupa intensity standardisation (fit a model, apply it)")
    sub = p.add_subparsers(dest="nyul_command", required=True, metavar="{fit,apply}")

    fit = sub.add_parser("fit", help="learn standard landmarks from training volumes")
    fit.add_argument("--images", nargs="+", required=True, help="training volumes")
    fit.add_argument("--masks", nargs="+", help="foreground masks, one per image (default: voxels > 0)")
    fit.add_argument("--model", required=True, help="output model, JSON")
    fit.add_argument("--histogram", metavar="PNG", help="also plot foreground histograms before/after")
    fit.add_argument("--output-range", type=commands.finite_float, nargs=2, default=(1.0, 100.0), metavar=("MIN", "MAX"))
    fit.add_argument("--percentiles", type=commands.bounded_float(0, 100, "percentile"), nargs=2, default=(1.0, 99.0), metavar=("LOW", "HIGH"),
                     help="tail cut-off percentiles (the end landmarks)")
    fit.add_argument("--foreground", choices=("positive", "above-mean", "all"), default="positive",
                     help="foreground without masks (default: voxels > 0, as intensity-normalization)")
    fit.add_argument("--shift-positive", action="store_true", help="shift images with negative values to min 0 first")
    fit.add_argument("--cut-tails", action="store_true", help="clamp applied output to the standard range")
    fit.set_defaults(func=run_nyul_fit)
    commands.declare_paths(fit, inputs=["images", "masks"], outputs=["model", "histogram"])

    apply = sub.add_parser("apply", help="standardise a volume with a fitted model")
    apply.add_argument("input", metavar="IN")
    apply.add_argument("output", metavar="OUT")
    apply.add_argument("--model", required=True, help="model JSON from `nyul fit`")
    apply.add_argument("--mask", help="foreground mask on the image grid")
    apply.set_defaults(func=run_nyul_apply)
    commands.declare_paths(apply, inputs=["input", "mask", "model"], outputs=["output"])


def run_nyul_fit(args) -> int:
    from . import nyul

    if args.masks is not None and len(args.masks) != len(args.images):
        raise InputError(f"--masks: got {len(args.masks)} masks for {len(args.images)} images; give one per image.")
    config = nyul.NyulConfig(output_min=args.output_range[0], output_max=args.output_range[1],
                             min_percentile=args.percentiles[0], max_percentile=args.percentiles[1],
                             foreground=args.foreground, shift_positive=args.shift_positive, cut_tails=args.cut_tails)
    images = [read(path) for path in args.images]
    masks = [read(path, "mask") for path in args.masks] if args.masks else None
    model = nyul.fit(images, masks, config, progress=args.progress_fn)
    outputs = [(model.to_json(), args.model)]  # JSON, never pickle: a model file must not run code
    if args.histogram:
        after = [nyul.apply(img, model, masks[i] if masks else None) for i, img in enumerate(images)]
        labels = [Path(p).name.split(".")[0] for p in args.images]
        outputs.append((lambda tmp: nyul.save_histograms_png(images, after, tmp, model.standard_landmarks, masks,
                                                             labels, config), args.histogram))
    imageio.write_all(outputs)  # the model and its plot together, or neither
    report(f"Nyul model from {len(images)} volumes -> {args.model}; standard landmarks "
           f"{[round(v, 2) for v in model.standard_landmarks]}")
    return 0


def run_nyul_apply(args) -> int:
    from . import nyul

    check_image_output(args.output)
    model = nyul.load_model(args.model)
    out = nyul.apply(read(args.input), model, read(args.mask, "mask"))
    imageio.write_all([(out, args.output)])
    report(f"Nyul standardised -> {args.output}")
    return 0


# --- normalize ---------------------------------------------------------------------------------


def add_normalize(subparsers) -> None:
    p = subparsers.add_parser("normalize", help="percentile or z-score normalisation (image / patient / dataset)")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--method", choices=("percentile", "zscore"), default="percentile")
    p.add_argument("--mask", help="statistics only inside this mask (image level)")
    p.add_argument("--low", type=commands.bounded_float(0, 100, "percentile"), default=1.0, help="low percentile (default 1)")
    p.add_argument("--high", type=commands.bounded_float(0, 100, "percentile"), default=99.0, help="high percentile (default 99)")
    p.add_argument("--fit-images", nargs="+", metavar="IMG",
                   help="pool statistics over these volumes instead of IN (patient / dataset level)")
    p.add_argument("--fit-masks", nargs="+", metavar="MASK", help="masks for --fit-images, one per image")
    p.add_argument("--stats-in", metavar="JSON", help="apply saved statistics (dataset level)")
    p.add_argument("--stats-out", metavar="JSON", help="save the statistics used")
    p.add_argument("--shift-positive", action="store_true", help="shift images with negative values to min 0 first")
    p.add_argument("--cut-tails", action="store_true", help="clip to [p_low, p_high] before scaling")
    p.set_defaults(func=run_normalize)
    commands.declare_paths(p, inputs=["input", "mask", "fit_images", "fit_masks", "stats_in"],
                           outputs=["output", "stats_out"])


def run_normalize(args) -> int:
    from . import normalize as norm

    check_image_output(args.output)
    if args.stats_in and args.fit_images:
        raise InputError("Use either --stats-in or --fit-images, not both.")
    image = read(args.input)
    stats = norm.load_stats(args.stats_in) if args.stats_in else _fit_normalize_stats(args, image)
    out = norm.apply_stats(image, stats)
    outputs = [(out, args.output)]
    if args.stats_out:
        outputs.append((norm.stats_json(stats), args.stats_out))
    imageio.write_all(outputs)
    offset, divisor = stats.scale
    report(f"{stats.method} normalisation: (I - {offset:.4g}) / {divisor:.4g} from {stats.n_images} volume(s) -> {args.output}")
    return 0


def _fit_normalize_stats(args, image: sitk.Image):
    from . import normalize as norm

    if args.fit_images:
        if args.fit_masks is not None and len(args.fit_masks) != len(args.fit_images):
            raise InputError("--fit-masks needs one mask per --fit-images volume.")
        images = [read(p) for p in args.fit_images]
        masks = [read(p, "mask") for p in args.fit_masks] if args.fit_masks else None
    else:
        images, masks = [image], [read(args.mask, "mask")]
    return norm.fit_stats(images, masks, args.method, args.low, args.high, args.shift_positive, args.cut_tails)


# --- denoise -----------------------------------------------------------------------------------


def add_denoise(subparsers) -> None:
    p = subparsers.add_parser("denoise", help="patch-based denoising or edge-preserving smoothing")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--method", choices=("patch", "smooth"), default="smooth",
                   help="patch: patch-based (slow, minutes); smooth: anisotropic diffusion (seconds)")
    p.add_argument("--noise-model", choices=("gaussian", "rician", "none"), default="rician")
    p.add_argument("--kernel-sigma", type=commands.positive_float, help="patch kernel bandwidth (default: estimated)")
    p.add_argument("--patch-radius", type=commands.bounded_int(1, 10, "patch radius"), default=2)
    p.add_argument("--iterations", type=commands.bounded_int(1, 1000, "iterations"),
                   help="patch: denoising iterations (1); smooth: diffusion steps (5)")
    p.add_argument("--sample-patches", type=commands.bounded_int(1, 10000, "sample patches"), default=100)
    p.add_argument("--fidelity-weight", type=commands.bounded_float(0, 1, "fidelity weight"), default=0.1,
                   help="weight of the noise model (patch)")
    p.add_argument("--smoother", choices=("anisotropic", "gaussian"), default="anisotropic")
    p.add_argument("--conductance", type=commands.positive_float, default=1.0, help="anisotropic diffusion conductance")
    p.add_argument("--sigma-mm", type=commands.positive_float, help="Gaussian sigma in mm (default: smallest spacing)")
    p.set_defaults(func=run_denoise)
    commands.declare_paths(p, inputs=["input"], outputs=["output"])


def run_denoise(args) -> int:
    from . import denoise

    check_image_output(args.output)
    image = read(args.input)
    if args.method == "patch":
        result = denoise.patch_denoise(image, args.noise_model, args.kernel_sigma, args.patch_radius,
                                       args.iterations or 1, args.sample_patches, args.fidelity_weight,
                                       progress=args.progress_fn)
    else:
        result = denoise.smooth(image, args.smoother, args.iterations or 5, args.conductance, args.sigma_mm,
                                progress=args.progress_fn)
    imageio.write_all([(result.image, args.output)])
    report(f"denoise ({result.method}) {result.seconds:.1f} s -> {args.output}")
    return 0


# --- registration ------------------------------------------------------------------------------


def _register_registration(subparsers) -> None:
    """`prostateai register FIXED MOVING OUT`: ADC / high-b DWI -> T2 (MRStandardizeLib.registration)."""
    import argparse

    p = subparsers.add_parser("register", help="register ADC / high-b DWI onto T2 (rigid, affine or + BSpline)")
    p.add_argument("fixed", metavar="FIXED", help="fixed image (T2): DICOM folder or NIfTI/NRRD/MHA")
    p.add_argument("moving", metavar="MOVING", help="moving image (ADC or high-b DWI)")
    p.add_argument("output", metavar="OUT", help="moving resampled onto the fixed grid (float32), e.g. adc_on_t2.nii.gz")
    p.add_argument("--transform", choices=("rigid", "affine", "bspline"), default="rigid")
    p.add_argument("--metric-on", choices=("intensity", "gradient"), default="intensity",
                   help="Mattes MI on the intensities or on the gradient-magnitude images")
    p.add_argument("--restarts", type=commands.bounded_int(1, 1000, "restarts"), default=1, help="random restarts (the paper uses 50); default 1")
    p.add_argument("--seed", type=commands.non_negative_int, default=0, help="seed for restarts and metric sampling (reproducible)")
    p.add_argument("--fixed-mask", metavar="M", help="restrict the metric to this mask (fixed grid)")
    p.add_argument("--selection-mask", metavar="M",
                   help="gland/zone label map (fixed grid): picks the best restart by gradient correlation")
    p.add_argument("--iterations", type=commands.bounded_int(1, 100000, "iterations"), default=100, help="iterations per level and stage (default 100)")
    p.add_argument("--sampling-percentage", type=commands.bounded_float(1e-4, 1.0, "sampling fraction"), default=0.5, help="metric sampling fraction (default 0.5)")
    p.add_argument("--mesh-size", type=commands.bounded_int(1, 64, "mesh size"), nargs=3, default=(4, 4, 2), metavar=("X", "Y", "Z"))
    p.add_argument("--init", choices=("scanner", "geometry", "moments"), default="scanner",
                   help="start: scanner coordinates (default), image centres or centres of mass")
    p.add_argument("--save-transform", metavar="T.tfm", help="write the transform (.tfm, .h5, .txt, .mat)")
    p.add_argument("--check-png", metavar="PNG", help="write before/after checkerboards on the middle gland slice")
    p.add_argument("--report", metavar="JSON", help="write numbers (metric, gradient correlation, restarts)")
    p.add_argument("--also", nargs=2, action="append", metavar=("IN", "OUT"),
                   help="resample another image of MOVING's acquisition (e.g. the high-b DWI) with the same "
                        "transform; repeatable")
    p.add_argument("--keep-initial-if-worse", action=argparse.BooleanOptionalAction, default=True,
                   help="if registering lowers the gradient correlation, output the scanner alignment (identity) "
                        "instead (default); either way a warning is printed")

    p.set_defaults(func=run_register)
    commands.declare_paths(p, inputs=["fixed", "moving", "fixed_mask", "selection_mask", "also.0"],
                           outputs=["output", "save_transform", "check_png", "report", "also.1"])


def _require_suffix(path: str | None, suffixes: Sequence[str], option: str) -> None:
    if path is not None and not str(path).lower().endswith(tuple(suffixes)):
        raise InputError(f"{option} '{path}': unsupported file type; use {', '.join(suffixes)}.")


def run_register(args) -> int:
    """`prostateai register FIXED MOVING OUT ...`: all outputs are written only if everything worked."""
    from .registration import TRANSFORM_SUFFIXES, register, resample_onto
    from .registration_check import save_check_png

    image_suffixes = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
    _require_suffix(args.output, image_suffixes, "OUT")
    _require_suffix(args.save_transform, TRANSFORM_SUFFIXES, "--save-transform")
    _require_suffix(args.check_png, (".png",), "--check-png")
    _require_suffix(args.report, (".json",), "--report")
    also = [tuple(pair) for pair in (getattr(args, "also", None) or [])]
    for _, out in also:
        _require_suffix(out, image_suffixes, "--also OUT")
    fixed, moving = imageio.read_image(args.fixed), imageio.read_image(args.moving)
    also_images = [imageio.read_image(path) for path, _ in also]
    for (path, _), image in zip(also, also_images):
        imageio.validate_volume(image, f"--also image '{path}'")
    fixed_mask = imageio.read_image(args.fixed_mask) if args.fixed_mask else None
    selection_mask = imageio.read_image(args.selection_mask) if args.selection_mask else None
    result = register(
        fixed, moving, transform=args.transform, metric_on=args.metric_on, fixed_mask=fixed_mask,
        restarts=args.restarts, seed=args.seed, mesh_size=tuple(args.mesh_size), selection_mask=selection_mask,
        sampling_percentage=args.sampling_percentage, iterations=args.iterations, init=args.init,
        progress=getattr(args, "progress_fn", None),
        keep_initial_if_worse=getattr(args, "keep_initial_if_worse", True),
    )
    summary = result.to_dict()
    summary.update(fixed=str(args.fixed), moving=str(args.moving), output=str(args.output),
                   transform_file=args.save_transform, check_png=args.check_png,
                   also=[{"input": str(path), "output": str(out)} for path, out in also])
    # All outputs together or none (imageio.write_all): the image, then whatever else was asked for.
    outputs = [(result.resampled, args.output)]
    if args.save_transform:
        outputs.append((lambda tmp: sitk.WriteTransform(result.transform, str(tmp)), args.save_transform))
    if args.check_png:
        shown_mask = selection_mask if selection_mask is not None else fixed_mask
        title = f"{Path(args.moving).name} → {Path(args.fixed).name}: {args.transform}"
        outputs.append((lambda tmp: save_check_png(fixed, moving, result.resampled, tmp, mask=shown_mask, title=title),
                        args.check_png))
    # Same acquisition and grid as MOVING (e.g. the high-b DWI next to the ADC): same transform.
    outputs += [(resample_onto(fixed, image, result.transform), out) for (_, out), image in zip(also, also_images)]
    if args.report:
        outputs.append((json.dumps(summary, indent=2), args.report))
    imageio.write_all(outputs)
    if result.warning:
        print(f"prostateai register: warning: {result.warning}", file=sys.stderr, flush=True)
    print(
        f"register ({args.transform}, {args.metric_on}, {args.restarts} restart(s), seed {args.seed}): "
        f"{result.seconds:.1f} s; gradient correlation {result.gradient_correlation_before:.3f} -> "
        f"{result.gradient_correlation_after:.3f}"
        f"{' (kept the scanner alignment)' if result.kept_initial else ''}; "
        f"metric {result.metric_before:.4f} -> {result.metric_after:.4f} -> {args.output}",
        flush=True,
    )
    return 0


# Sub-commands, in help order: one small `add_*(subparsers)` function each.
COMMANDS = [add_n4, add_nyul, add_normalize, add_denoise, _register_registration]


def register(subparsers) -> None:
    """Add the MR sub-commands to the `prostateai` parser."""
    for add in COMMANDS:
        add(subparsers)


def main(argv: list[str] | None = None) -> int:
    """Only this module's sub-commands (what the MRStandardize Slicer module runs as a job)."""
    return commands.main([register], argv, "python -m MRStandardizeLib.cli", "ProstateAI MR standardisation and registration.")


if __name__ == "__main__":
    commands.exit_fast(main())
