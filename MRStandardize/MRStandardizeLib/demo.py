"""MR demo: N4, Nyul and ADC -> T2 registration on the bundled ProstateX-0218 case; volumes, PNGs, summary.

    python -m MRStandardizeLib.demo --out demo-output/mrstandardize

Steps (all on Resources/SampleData/ProstateX-0218, read from its DICOM folders):

1. N4 bias-field correction of the axial T2 (preset "full"; "preview" with --quick): the corrected T2 and the
   bias field as .nii.gz, and one PNG with the T2 before / after and the bias field as a heat map over the T2.
2. Nyul standardisation: a model fitted on the N4-corrected T2 plus the PROMISE12 T2 cases of
   ../shared/data/promise12 when that folder exists (otherwise on the T2 before and after N4 only), saved as
   JSON and applied to the corrected T2; the before/after histogram PNG with the standard landmarks.
3. Rigid ADC -> T2 registration (one restart), the metric restricted to a central pelvic region (this case has
   no gland mask; the prostate sits in the middle of a prostate T2 field of view): the ADC on the T2 grid, the
   transform and the checkerboard / green-magenta check PNG.
4. `mr_demo_summary.json`: timings, bias-field range, Nyul landmarks, gradient correlation before/after.

Slice PNGs are in radiological orientation (ProstateAICore.render.display_slice: patient right on the image's
left, anterior up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ProstateAICore import render
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from ProstateAICore.geometry import geometry
from ProstateAICore.imageio import read_image, write_image, write_text

from . import n4, nyul, registration, registration_check

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "Resources" / "SampleData" / "ProstateX-0218"
SHARED_DATA = Path(os.environ.get("PROSTATEAI_SHARED_DATA", REPO.parent / "shared" / "data"))
CENTRAL_ROI_HALF_WIDTH_MM = 40.0  # metric region for the registration: 80 x 80 mm in-plane, all slices
BIAS_ALPHA = 0.4
BIAS_COLORMAP = "turbo"


def run(out_dir: str | Path, sample: str | Path | None = None, promise12: str | Path | None = None,
        n4_quality: str = "full") -> dict:
    """Run the demo; returns the summary (also written to out_dir/mr_demo_summary.json).

    `promise12`: folder with caseNN_t2.nii.gz files for the Nyul fit (default ../shared/data/promise12 if it
    exists; pass a missing path to fit on the bundled T2 alone).
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = Path(sample) if sample is not None else SAMPLE
    promise12 = Path(promise12) if promise12 is not None else SHARED_DATA / "promise12"

    clock = time.perf_counter()
    t2 = read_image(sample / "t2w")
    adc = read_image(sample / "adc")
    timings["read_dicom"] = time.perf_counter() - clock

    # 1. N4 -----------------------------------------------------------------------------------
    clock = time.perf_counter()
    result = n4.n4_correct(t2, quality=n4_quality)
    timings["n4"] = time.perf_counter() - clock
    corrected_path = write_image(result.corrected, out_dir / "mr_t2_n4.nii.gz")
    field_path = write_image(result.bias_field, out_dir / "mr_t2_bias_field.nii.gz")
    field = sitk.GetArrayViewFromImage(result.bias_field)
    inside = sitk.GetArrayViewFromImage(result.mask) > 0
    clock = time.perf_counter()
    n4_png = save_n4_png(t2, result.corrected, result.bias_field, out_dir / "mr_t2_n4.png",
                         title=f"ProstateX-0218 T2, N4 ({n4_quality})")
    timings["n4_png"] = time.perf_counter() - clock

    # 2. Nyul ---------------------------------------------------------------------------------
    clock = time.perf_counter()
    training, labels = [result.corrected], ["ProstateX-0218 T2 (N4)"]
    promise_files = sorted(promise12.glob("case*_t2.nii.gz")) if promise12.is_dir() else []
    if promise_files:
        training += [read_image(path) for path in promise_files]
        labels += [path.name.split("_")[0] for path in promise_files]
        training_set = f"ProstateX-0218 T2 after N4 + {len(promise_files)} PROMISE12 T2 ({promise12})"
    else:  # no shared data: the T2 before and after N4 are the two training images
        training, labels = [t2, result.corrected], ["ProstateX-0218 T2 raw", "ProstateX-0218 T2 (N4)"]
        training_set = "ProstateX-0218 T2 before and after N4 (no PROMISE12 folder)"
    model = nyul.fit(training)
    standardized = [nyul.apply(image, model) for image in training]
    timings["nyul"] = time.perf_counter() - clock
    model_path = nyul.save_model(model, out_dir / "mr_nyul_model.json")
    t2_nyul = standardized[0] if promise_files else standardized[1]
    nyul_path = write_image(t2_nyul, out_dir / "mr_t2_nyul.nii.gz")
    clock = time.perf_counter()
    histogram_png = nyul.save_histograms_png(training, standardized, out_dir / "mr_nyul_histograms.png",
                                             landmarks=model.standard_landmarks,
                                             labels=labels if len(labels) <= 12 else None)
    timings["nyul_png"] = time.perf_counter() - clock

    # 3. Registration ADC -> T2 -----------------------------------------------------------------
    clock = time.perf_counter()
    roi = central_roi(result.corrected, CENTRAL_ROI_HALF_WIDTH_MM)
    reg = registration.register(result.corrected, adc, transform="rigid", restarts=1, fixed_mask=roi)
    timings["registration"] = time.perf_counter() - clock
    adc_path = write_image(reg.resampled, out_dir / "mr_adc_on_t2.nii.gz")
    transform_path = registration.save_transform(reg.transform, out_dir / "mr_adc_to_t2.tfm")
    clock = time.perf_counter()
    check_png = registration_check.save_check_png(
        result.corrected, adc, reg.resampled, out_dir / "mr_registration_check.png", mask=roi,
        title=f"ADC -> T2 rigid: gradient correlation {reg.gradient_correlation_before:.3f} -> "
              f"{reg.gradient_correlation_after:.3f} (yellow: metric region)")
    timings["registration_png"] = time.perf_counter() - clock

    t2_marks = nyul.landmarks(t2_nyul, config=model.config)
    summary = {
        "sample": str(sample),
        "t2_geometry": geometry(t2),
        "adc_geometry": geometry(adc),
        "n4": {
            "quality": n4_quality,
            "iterations": result.iterations,
            "shrink_factors": list(result.shrink_factors),
            "seconds": round(result.seconds, 2),
            "bias_field_min": float(field.min()),
            "bias_field_max": float(field.max()),
            "bias_field_min_in_mask": float(field[inside].min()),
            "bias_field_max_in_mask": float(field[inside].max()),
            "corrected": corrected_path.name,
            "bias_field": field_path.name,
            "png": Path(n4_png).name,
        },
        "nyul": {
            "training_set": training_set,
            "n_images": model.n_images,
            "percentiles": [float(p) for p in model.config.percentiles],
            "standard_landmarks": [round(v, 4) for v in model.standard_landmarks],
            "t2_landmarks_before": [round(float(v), 4) for v in nyul.landmarks(result.corrected, config=model.config)],
            "t2_landmarks_after": [round(float(v), 4) for v in t2_marks],
            "model": model_path.name,
            "standardized_t2": nyul_path.name,
            "histogram_png": histogram_png.name,
        },
        "registration": {
            **reg.to_dict(),
            "transform_parameters": [float(v) for v in reg.transform.GetParameters()],
            "metric_region": f"central {2 * CENTRAL_ROI_HALF_WIDTH_MM:g} x {2 * CENTRAL_ROI_HALF_WIDTH_MM:g} mm "
                             "in-plane box of the T2, all slices",
            "fixed": "T2 after N4",
            "resampled_adc": adc_path.name,
            "transform": transform_path.name,
            "check_png": check_png.name,
        },
        "timings_seconds": {key: round(value, 2) for key, value in timings.items()},
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    write_text(json.dumps(summary, indent=2), out_dir / "mr_demo_summary.json")
    return summary


def central_roi(image: sitk.Image, half_width_mm: float) -> sitk.Image:
    """uint8 0/1 mask on `image`'s grid: a square of +-half_width_mm about the in-plane centre, every slice."""
    size, spacing = image.GetSize(), image.GetSpacing()
    array = np.zeros(size[::-1], np.uint8)  # (z, y, x)
    centre = [(n - 1) / 2 for n in size[:2]]
    half = [max(1, int(round(half_width_mm / s))) for s in spacing[:2]]
    ys = slice(max(0, int(centre[1]) - half[1]), min(size[1], int(centre[1]) + half[1] + 1))
    xs = slice(max(0, int(centre[0]) - half[0]), min(size[0], int(centre[0]) + half[0] + 1))
    array[:, ys, xs] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


def _grey_window(plane: np.ndarray) -> tuple[float, float]:
    """p0.5..p99.5 of the slice's non-zero pixels (each panel windowed on its own scale)."""
    values = plane[plane > 0]
    values = values if values.size else plane.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def save_n4_png(before: sitk.Image, after: sitk.Image, bias_field: sitk.Image, path, index: int | None = None,
                title: str | None = None) -> str:
    """Three axial panels side by side: T2 before N4, after N4, bias field heat map over the T2 before.

    Orientation comes from render.display_slice (radiological: patient right on the image's left, anterior up);
    the heat map is a matplotlib colormap drawn with alpha over the grey T2, with its colour bar.
    """
    plane_before, aspect, index = render.display_slice(before, "axial", index)
    plane_after, _, _ = render.display_slice(after, "axial", index)
    plane_field, _, _ = render.display_slice(bias_field, "axial", index)
    rows, cols = plane_before.shape
    panel_w = 4.0
    panel_h = panel_w * rows * aspect / cols
    fig = Figure(figsize=(3 * panel_w + 0.9, panel_h + 0.7), dpi=110, facecolor="black")
    FigureCanvasAgg(fig)
    width = 3 * panel_w + 0.9
    height = panel_h + 0.7
    panels = (
        ("T2 before N4", plane_before, None),
        ("T2 after N4", plane_after, None),
        ("bias field over T2", plane_before, plane_field),
    )
    heat = None
    for k, (name, plane, overlay) in enumerate(panels):
        ax = fig.add_axes((k * panel_w / width, 0.0, panel_w / width, panel_h / height))
        lo, hi = _grey_window(plane)
        ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest", aspect="auto")
        if overlay is not None:
            heat = ax.imshow(overlay, cmap=colormaps[BIAS_COLORMAP], alpha=BIAS_ALPHA, interpolation="bilinear",
                             vmin=float(overlay.min()), vmax=float(overlay.max()), aspect="auto")
        ax.set_axis_off()
        render.draw_edge_letters(ax, "axial", fontsize=10)
        ax.text(0.5, 1.0 + 0.12 / panel_h, name + ("" if overlay is not None else f"  [{lo:.0f}, {hi:.0f}]"),
                transform=ax.transAxes, ha="center", va="bottom", color="white", fontsize=9)
    if heat is not None:
        bar_ax = fig.add_axes(((3 * panel_w + 0.15) / width, 0.08, 0.18 / width, 0.8 * panel_h / height))
        bar = fig.colorbar(heat, cax=bar_ax)
        bar.solids.set_alpha(1.0)
        bar.ax.tick_params(colors="white", labelsize=8)
        bar.set_label("bias field, this slice (T2 = true × field)", color="white", fontsize=8)
    fig.text(0.5, 1 - 0.16 / height, f"{title or 'N4'}  [axial {index}]", ha="center", va="top", color="white",
             fontsize=10)
    return render.save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MR standardisation demo on the bundled ProstateX-0218 case.")
    parser.add_argument("--out", default="demo-output/mrstandardize", help="output folder")
    parser.add_argument("--quick", action="store_true", help="N4 'preview' preset instead of 'full'")
    args = parser.parse_args(argv)
    summary = run(args.out, n4_quality="preview" if args.quick else "full")
    n4_info, reg = summary["n4"], summary["registration"]
    print(f"N4 ({n4_info['quality']}): bias field {n4_info['bias_field_min']:.3f} .. {n4_info['bias_field_max']:.3f}")
    print(f"Nyul: {summary['nyul']['training_set']}")
    print(f"registration: gradient correlation {reg['gradient_correlation_before']:.3f} -> "
          f"{reg['gradient_correlation_after']:.3f}")
    print(f"timings: {summary['timings_seconds']}; total {summary['total_seconds']:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
