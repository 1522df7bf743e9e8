"""CT sub-commands of `prostateai`: `ct` (preprocess a CT volume) and `info` (describe one)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ProstateAICore import commands
from ProstateAICore.errors import InputError
from ProstateAICore.geometry import geometry
from ProstateAICore.imageio import read_image, suffix_of, write_all
from ProstateAICore.intensity import quantiles

from .hu import label_map_reason, load_ct
from .pipeline import CTPipelineConfig, run_pipeline
from .window import PRESETS

OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

CT_EPILOG = """\
order: denoise -> resample -> window/clip -> normalise -> crop/pad.
examples:
  prostateai ct chest.nrrd lungs_u8.nii.gz --preset lungs --dtype uint8
  prostateai ct dicom_folder/ out.nii.gz --percentile 0.6 0.99 --normalize zscore --spacing 1.5 1.5 1.5
"""


def register(subparsers) -> None:
    ct = subparsers.add_parser(
        "ct", help="preprocess a CT volume (window, normalise, resample, denoise, crop/pad)",
        description="Preprocess a CT volume in Hounsfield units.", epilog=CT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ct.add_argument("input", help="DICOM series folder, DICOM file, NIfTI, NRRD or MHA")
    ct.add_argument("output", help="output volume (.nii.gz, .nii, .nrrd, .mha); written only on success")
    window = ct.add_mutually_exclusive_group()
    window.add_argument("--preset", metavar="NAME", help=f"window preset: {', '.join(PRESETS)}")
    window.add_argument("--window", nargs=2, type=commands.finite_float, metavar=("WL", "WW"), help="window level and width (HU)")
    window.add_argument("--clip", nargs=2, type=commands.finite_float, metavar=("LO", "HI"), help="clip to [LO, HI] HU")
    window.add_argument("--percentile", nargs=2, type=commands.finite_float, metavar=("QLO", "QHI"),
                        help="window between two quantiles in [0, 1], e.g. 0.6 0.99")
    ct.add_argument("--normalize", choices=("minmax", "zscore", "none"), default=None,
                    help="default: minmax for integer --dtype, else none")
    ct.add_argument("--dtype", choices=("uint8", "uint16", "float32"), default="float32")
    ct.add_argument("--spacing", nargs=3, type=commands.bounded_float(0.01, 100.0, "voxel size (mm)"), metavar=("X", "Y", "Z"), help="resample to this spacing (mm)")
    ct.add_argument("--reference", metavar="REF", help="resample onto this image's grid")
    ct.add_argument("--interpolator", choices=("bspline", "linear", "nearest"), default="bspline")
    ct.add_argument("--denoise", choices=("none", "curvature_flow", "anisotropic", "median", "gaussian"), default="none")
    ct.add_argument("--denoise-iterations", type=commands.bounded_int(1, 1000, "iterations"), default=5, metavar="N")
    ct.add_argument("--median-radius", type=commands.bounded_int(1, 10, "median radius"), default=1, metavar="R", help="voxels")
    ct.add_argument("--sigma", type=commands.positive_float, default=1.0, metavar="MM", help="Gaussian sigma (mm)")
    ct.add_argument("--size", nargs=3, type=commands.bounded_int(1, 4096, "size (voxels)"), metavar=("X", "Y", "Z"), help="crop/pad to this many voxels")
    ct.add_argument("--pad-value", type=commands.finite_float, metavar="V", help="pad value in HU (default: window low end or minimum)")
    ct.add_argument("--mask", metavar="M", help="mask on the input grid: z-score statistics and crop centre")
    ct.add_argument("--report", metavar="JSON", help="write a JSON report of the run")
    ct.add_argument("--allow-irregular", action="store_true",
                    help="resample a DICOM series with missing/uneven slices onto a regular grid (else refused)")
    ct.set_defaults(func=run_ct)
    commands.declare_paths(ct, inputs=["input", "reference", "mask"], outputs=["output", "report"])

    info = subparsers.add_parser("info", help="describe a CT: geometry, pixel type, HU/rescale, percentiles",
                                 description="Describe a CT volume (DICOM, NIfTI, NRRD, MHA).")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=run_info)
    commands.declare_paths(info, inputs=["path"])


def _check_output_path(path: str, what: str, suffixes) -> None:
    if suffix_of(path) not in suffixes:
        raise InputError(f"Unsupported {what} '{Path(path).name}'; use {', '.join(suffixes)}.")


def config_from_args(args) -> CTPipelineConfig:
    """Translate command-line options into the shared CTPipelineConfig (masks/reference read here)."""
    config = CTPipelineConfig(
        denoise=args.denoise, denoise_iterations=args.denoise_iterations, median_radius=args.median_radius,
        gaussian_sigma_mm=args.sigma, interpolator=args.interpolator, dtype=args.dtype,
        spacing=tuple(args.spacing) if args.spacing else None,
        size=tuple(args.size) if args.size else None, pad_value=args.pad_value,
    )
    if args.preset is not None:
        config.window_mode, config.preset = "preset", args.preset
    elif args.window is not None:
        config.window_mode, (config.level, config.width) = "custom", args.window
    elif args.clip is not None:
        config.window_mode, config.clip = "clip", tuple(args.clip)
    elif args.percentile is not None:
        config.window_mode, config.quantiles = "percentile", tuple(args.percentile)
    if args.normalize is not None:
        if args.normalize == "none" and args.dtype != "float32":
            raise InputError(f"--dtype {args.dtype} needs --normalize minmax (integer outputs are min-max scaled).")
        config.normalize = args.normalize
    else:
        config.normalize = "minmax" if args.dtype != "float32" else "none"
    if args.reference:
        config.reference = read_image(args.reference)
    if args.mask:
        mask = read_image(args.mask)
        config.zscore_mask = mask if config.normalize == "zscore" else None
        if config.size is not None:
            config.crop_mask, config.crop_center = mask, "mask"
        if config.zscore_mask is None and config.crop_mask is None:
            raise InputError("--mask is used for --normalize zscore or a --size crop centre; neither was asked for.")
    return config


def run_ct(args) -> int:
    started = time.perf_counter()
    # Check the output names before any work, so a typo does not cost a whole run.
    _check_output_path(args.output, "output format", OUTPUT_SUFFIXES)
    if args.report:
        _check_output_path(args.report, "report format", (".json",))
    image, info = load_ct(args.input, allow_irregular=args.allow_irregular)
    config = config_from_args(args)
    if info.padding_voxels:
        config.padding_value = info.padding_value_hu  # DICOM padding is not tissue: fill it before statistics
    result, report = run_pipeline(image, config, progress=args.progress_fn)
    report = {"input": str(args.input), "output": str(args.output), "hu": info.to_dict(), **report}
    outputs = [(result, args.output)]
    if args.report:
        outputs.append((json.dumps(report, indent=2, default=_json_default), args.report))
    write_all(outputs)  # all or nothing
    window = report["window"]
    window_text = f", window [{window[0]:g}, {window[1]:g}] HU" if window else ""
    print(f"Wrote {args.output}: {report['dtype']}, size {tuple(result.GetSize())}{window_text} "
          f"({time.perf_counter() - started:.1f} s). {info.message}")
    for warning in info.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def describe(path: str) -> dict:
    """Everything `prostateai info` shows, as a dict."""
    image, info = load_ct(path, validate=False)
    array = sitk.GetArrayViewFromImage(image)
    result = {"path": str(path), "pixel_type": image.GetPixelIDTypeAsString(), "dimension": image.GetDimension(),
              **geometry(image), "hu": info.to_dict()}
    if array.size and (not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all()):
        p1, p50, p99 = quantiles(array, (0.01, 0.5, 0.99))
        result["intensity"] = {"min": float(array.min()), "p1": float(p1), "p50": float(p50),
                               "p99": float(p99), "max": float(array.max())}
    else:
        result["intensity"] = None
    reason = label_map_reason(array) if array.size else None
    if reason:
        result["hu"]["warnings"].append(f"Looks like a label map, not a CT: {reason}.")
    return result


def run_info(args) -> int:
    facts = describe(args.path)
    if args.json:
        print(json.dumps(facts, indent=2, default=_json_default))
        return 0
    hu = facts["hu"]
    lines = [
        f"{facts['path']}",
        f"  kind:        {hu['kind']}" + (f" ({hu['n_files']} files)" if hu["n_files"] > 1 else "")
        + (f", modality {hu['modality']}" if hu["modality"] else ""),
        f"  pixel type:  {facts['pixel_type']}",
        f"  size:        {tuple(facts['size'])}",
        f"  spacing:     {tuple(round(s, 4) for s in facts['spacing'])} mm",
        f"  origin:      {tuple(round(o, 3) for o in facts['origin'])} mm",
        f"  direction:   {tuple(round(d, 4) for d in facts['direction'])}",
        f"  HU:          {hu['message']}",
    ]
    stats = facts["intensity"]
    if stats:
        lines.append("  intensity:   min {min:g}  p1 {p1:g}  p50 {p50:g}  p99 {p99:g}  max {max:g}".format(**stats))
    else:
        lines.append("  intensity:   not finite (NaN or infinite voxels)")
    lines += [f"  warning:     {w}" for w in hu["warnings"]]
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Only this module's sub-commands (what the CTPreprocess Slicer module runs as a job)."""
    return commands.main([register], argv, "python -m CTPreprocessLib.cli", "ProstateAI CT preprocessing.")


if __name__ == "__main__":
    commands.exit_fast(main())
