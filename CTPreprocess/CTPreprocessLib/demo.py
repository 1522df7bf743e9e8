"""CT demo: preprocess the bundled abdomen/pelvis CT with several settings and write volumes, PNGs and a summary.

    python -m CTPreprocessLib.demo --out demo-output/ct

Outputs (in `out_dir`): one uint8 volume per organ preset (lungs, abdomen soft tissue, liver, spine bone),
a percentile-window + z-score float32 volume, a 1.5 mm B-spline resample, PNG previews in radiological
orientation, a histogram with the percentile window, and `ct_demo_summary.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ProstateAICore.geometry import geometry
from ProstateAICore.imageio import write_image, write_text

from ProstateAICore import render
from .hu import load_ct
from .pipeline import CTPipelineConfig, run_pipeline

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "sample_ct_abdomen_pelvis.nii.gz"
LUNG_HU = (-950, -500)
LIVER_BELOW_LUNG_BASE_MM = 35.0
AXIS_OF_VIEW = {"axial": 2, "coronal": 1, "sagittal": 0}  # LPS index axis across each view


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient: largest connected region above -500 HU, holes (lungs, bowel gas) filled slice by slice.

    Why: the table's foam and the air around the patient also hold "lung-range" HU.
    """
    labels, count = ndimage.label(hu > -500)
    if count == 0:
        return np.zeros(hu.shape, bool)
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones(hu.shape), labels, range(1, count + 1))))
    body = labels == largest
    return np.stack([ndimage.binary_fill_holes(plane) for plane in body])


def landmark_slices(image: sitk.Image) -> dict[str, int]:
    """Slice indices (in the LPS-reoriented volume render.py uses) for the preview planes.

    lungs / lungs_coronal: the axial / coronal slice with the most lung-range voxels (for an abdominal
    scan: through the lung bases); liver: a few cm below; coronal / sagittal: through the body's centre.
    """
    lps = render.to_lps(image)
    hu = sitk.GetArrayViewFromImage(lps)  # (k: S, j: P, i: L); `lps` stays alive in this function
    body = body_mask(hu)
    lung_voxels = (hu > LUNG_HU[0]) & (hu < LUNG_HU[1]) & body
    lung = int(np.argmax(np.count_nonzero(lung_voxels, axis=(1, 2))))
    # Coronal: count only near the lung slice, or bowel gas lower down can win.
    slab = int(round(LIVER_BELOW_LUNG_BASE_MM / lps.GetSpacing()[2]))
    lung_coronal = int(np.argmax(np.count_nonzero(lung_voxels[max(0, lung - slab):lung + slab + 1], axis=(0, 2))))
    liver = max(0, lung - int(round(LIVER_BELOW_LUNG_BASE_MM / lps.GetSpacing()[2])))
    j = int(round(np.mean(np.flatnonzero(body.any(axis=(0, 2))))))
    i = int(round(np.mean(np.flatnonzero(body.any(axis=(0, 1))))))
    return {"lungs": lung, "lungs_coronal": lung_coronal, "liver": liver, "coronal": j, "sagittal": i}


def _cases(resample_spacing: float) -> list[tuple[str, CTPipelineConfig, list[tuple[str, str]]]]:
    """(name, config, previews [(axis, landmark)])."""
    preset = lambda name: CTPipelineConfig(window_mode="preset", preset=name, normalize="minmax", dtype="uint8")  # noqa: E731
    return [
        ("lungs", preset("lungs"), [("axial", "lungs"), ("coronal", "lungs_coronal")]),
        ("abdomen_soft_tissue", preset("abdomen_soft_tissue"), [("axial", "liver"), ("coronal", "coronal")]),
        ("liver", preset("liver"), [("axial", "liver")]),
        ("spine_bone", preset("spine_bone"), [("sagittal", "sagittal"), ("axial", "liver")]),
        ("percentile_zscore", CTPipelineConfig(window_mode="percentile", quantiles=(0.6, 0.99), normalize="zscore"),
         [("axial", "liver"), ("coronal", "coronal")]),
        (f"resampled_{resample_spacing:g}mm", CTPipelineConfig(spacing=(resample_spacing,) * 3, interpolator="bspline"),
         [("coronal", "coronal")]),
    ]


def _display_range(name: str, output: sitk.Image, report: dict) -> tuple[float, float]:
    """Grey range for the PNG of an output volume, in the output's own units."""
    if report["dtype"] == "uint8":
        return 0.0, 255.0
    if report["normalize"] == "zscore":
        array = sitk.GetArrayViewFromImage(output)
        return float(array.min()), float(array.max())
    return -160.0, 240.0  # unwindowed HU (the resample): abdomen soft-tissue window


def run(out_dir: str | Path, sample: str | Path | None = None, resample_spacing: float = 1.5) -> dict:
    """Run the demo; returns the summary (also written to out_dir/ct_demo_summary.json)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = Path(sample) if sample is not None else SAMPLE
    image, info = load_ct(sample)
    input_spacing = render.lps_spacing(image)
    marks = landmark_slices(image)
    outputs = []
    for name, config, previews in _cases(resample_spacing):
        output, report = run_pipeline(image, config)
        volume = write_image(output, out_dir / f"ct_{name}.nii.gz")
        lo, hi = _display_range(name, output, report)
        pngs = []
        for axis, mark in previews:
            # Landmarks are input slice indices; a resampled volume has its own spacing.
            k = AXIS_OF_VIEW[axis]
            index = int(round(marks[mark] * input_spacing[k] / render.lps_spacing(output)[k]))
            png = out_dir / f"ct_{name}_{axis}.png"
            render.save_slice_png(output, png, lo, hi, axis, index, title=_title(name, report))
            pngs.append(png.name)
        outputs.append({
            "name": name, "volume": volume.name, "pngs": pngs, "window": report["window"],
            "normalize": report["normalize"], "dtype": report["dtype"], "size": list(output.GetSize()),
            "spacing": list(output.GetSpacing()), "seconds": report["total_seconds"],
            "steps": report["steps"],
        })
    percentile = next(o for o in outputs if o["name"] == "percentile_zscore")["window"]
    histogram_png = out_dir / "ct_histogram.png"
    render.save_histogram_png(image, histogram_png, tuple(percentile),
                              title=f"input HU, percentile window p60-p99 = [{percentile[0]:g}, {percentile[1]:g}]")
    summary = {
        "sample": str(sample), "hu": info.to_dict(), "input_geometry": geometry(image), "landmarks": marks,
        "outputs": outputs, "histogram_png": histogram_png.name, "total_seconds": round(time.perf_counter() - started, 2),
    }
    write_text(json.dumps(summary, indent=2), out_dir / "ct_demo_summary.json")
    return summary


def _title(name: str, report: dict) -> str:
    window = report["window"]
    text = name.replace("_", " ")
    if window:
        text += f"  [{window[0]:g}, {window[1]:g}] HU"
    return text + f"  {report['dtype']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CT preprocessing demo on the bundled sample CT.")
    parser.add_argument("--out", default="demo-output/ct", help="output folder")
    parser.add_argument("--sample", default=None, help="another CT instead of the bundled sample")
    args = parser.parse_args(argv)
    summary = run(args.out, args.sample)
    for output in summary["outputs"]:
        print(f"{output['name']:>22}: {output['volume']}  {', '.join(output['pngs'])}  ({output['seconds']:.2f} s)")
    print(f"histogram: {summary['histogram_png']}; total {summary['total_seconds']:.1f} s; summary: ct_demo_summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
