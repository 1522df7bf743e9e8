"""Benchmark: our CT steps against the plain numpy / SimpleITK way of doing the same thing.

    python -m CTPreprocessLib.bench            (or: make bench)

1. percentile_window vs np.percentile / np.quantile on a 52 M-voxel CT (lung1 resampled in z to 200
   slices), int16 and float32, with the HU error;
2. resample_to_spacing vs one plain sitk.ResampleImageFilter call;
3. the whole pipeline vs a plain SimpleITK/numpy chain doing the same steps.
Times are the best of a few runs (the machine may be shared). Ratio = ours / reference (< 1: we are faster).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .pipeline import CTPipelineConfig, run_pipeline
from .resample import resample_to_spacing
from .window import percentile_window

DATA = Path(os.environ.get("PROSTATEAI_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
LUNG1 = DATA / "ct" / "radiomics_lung1" / "lung1_image.nrrd"


def best_time(func, repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def big_ct(image: sitk.Image, slices: int = 200, pixel_type=sitk.sitkInt16) -> sitk.Image:
    """The chest CT resampled in z to `slices` slices: 512 x 512 x 200 = 52.4 M voxels."""
    size = list(image.GetSize())
    spacing = list(image.GetSpacing())
    spacing[2] = spacing[2] * size[2] / slices
    size[2] = slices
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), -1024.0, pixel_type)


def bench_percentile(ct: sitk.Image, label: str, repeats: int) -> dict:
    array = sitk.GetArrayViewFromImage(ct)
    ours_s, ours = best_time(lambda: percentile_window(ct, 0.6, 0.99), repeats)
    pct_s, pct = best_time(lambda: np.percentile(array, [60.0, 99.0]), 2)
    qnt_s, qnt = best_time(lambda: np.quantile(array, [0.6, 0.99]), 2)
    error = float(np.max(np.abs(np.array(ours) - qnt)))
    return {"task": f"percentile_window {label} ({array.size / 1e6:.1f} M voxels)", "ours": ours_s,
            "rows": [("np.percentile", pct_s), ("np.quantile", qnt_s)],
            "note": f"p60/p99 = {ours[0]:.2f} / {ours[1]:.2f} HU, max error vs np.quantile {error:.4f} HU"}


def plain_resample(image: sitk.Image, spacing, interpolator, default: float = -1024.0) -> sitk.Image:
    f = sitk.ResampleImageFilter()
    size = [math.ceil(n * s / t - 1e-6) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    f.SetSize(size)
    f.SetOutputSpacing(spacing)
    f.SetOutputOrigin(image.GetOrigin())
    f.SetOutputDirection(image.GetDirection())
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(default)
    f.SetOutputPixelType(sitk.sitkFloat32)
    return f.Execute(image)


def bench_resample(image: sitk.Image, name: str, interpolator, repeats: int) -> dict:
    spacing = (1.5, 1.5, 1.5)
    ours_s, ours = best_time(lambda: resample_to_spacing(image, spacing, name), repeats)
    ref_s, ref = best_time(lambda: plain_resample(image, spacing, interpolator), repeats)
    same = np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(ref))
    return {"task": f"resample_to_spacing {name} -> 1.5 mm {tuple(ours.GetSize())}", "ours": ours_s,
            "rows": [("sitk.ResampleImageFilter", ref_s)], "note": f"identical voxels: {same}"}


def plain_chain(image: sitk.Image, size) -> sitk.Image:
    """Gaussian 1 mm -> linear resample 1.5 mm -> lungs window -> uint8 -> centre crop/pad, by hand."""
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), 1.0)
    minimum = float(sitk.GetArrayViewFromImage(smooth).min())  # outside = air, as the pipeline does
    resampled = plain_resample(smooth, (1.5, 1.5, 1.5), sitk.sitkLinear, minimum)
    hu = sitk.GetArrayFromImage(resampled)
    lo, hi = -1350.0, 150.0
    scaled = np.rint(np.clip((hu.astype(np.float64) - lo) / (hi - lo) * 255.0, 0, 255)).astype(np.uint8)
    out = np.zeros(size[::-1], np.uint8)
    old = scaled.shape
    start = [(o - n) // 2 for o, n in zip(old, size[::-1])]
    src = tuple(slice(max(0, s), min(o, s + n)) for o, n, s in zip(old, size[::-1], start))
    dst = tuple(slice(max(0, s) - s, min(o, s + n) - s) for o, n, s in zip(old, size[::-1], start))
    out[dst] = scaled[src]
    result = sitk.GetImageFromArray(out)
    result.SetSpacing(resampled.GetSpacing())
    result.SetDirection(resampled.GetDirection())
    result.SetOrigin(resampled.TransformContinuousIndexToPhysicalPoint([float(s) for s in start[::-1]]))
    return result


def bench_pipeline(image: sitk.Image, repeats: int) -> dict:
    size = (224, 224, 128)
    config = CTPipelineConfig(denoise="gaussian", gaussian_sigma_mm=1.0, spacing=(1.5, 1.5, 1.5), interpolator="linear",
                              window_mode="preset", preset="lungs", normalize="minmax", dtype="uint8", size=size)
    ours_s, (ours, _) = best_time(lambda: run_pipeline(image, config), repeats)
    ref_s, ref = best_time(lambda: plain_chain(image, size), repeats)
    a, b = sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(ref)
    diff = int(np.max(np.abs(a.astype(int) - b.astype(int))))
    same_geometry = np.allclose(ours.GetOrigin(), ref.GetOrigin()) and ours.GetSize() == ref.GetSize()
    return {"task": "pipeline gaussian+resample+lungs+uint8+crop/pad", "ours": ours_s,
            "rows": [("plain SimpleITK/numpy chain", ref_s)],
            "note": f"max voxel difference {diff}, same geometry: {same_geometry}"}


def print_table(results: list[dict]) -> None:
    print(f"{'task':<58} {'ours (s)':>9}  {'reference':<28} {'ref (s)':>8} {'ours/ref':>9}")
    print("-" * 118)
    for r in results:
        for i, (name, ref_s) in enumerate(r["rows"]):
            task = r["task"] if i == 0 else ""
            ours = f"{r['ours']:.3f}" if i == 0 else ""
            print(f"{task:<58} {ours:>9}  {name:<28} {ref_s:>8.3f} {r['ours'] / ref_s:>9.2f}")
        print(f"{'':<58} {r['note']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing of the fast steps (best is kept)")
    args = parser.parse_args(argv)
    if not LUNG1.exists():
        print(f"bench: {LUNG1} not found (set PROSTATEAI_SHARED_DATA)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    lung1 = sitk.ReadImage(str(LUNG1))
    results = []
    big = big_ct(lung1)
    results.append(bench_percentile(big, "int16", args.repeats))
    del big
    big_float = big_ct(lung1, pixel_type=sitk.sitkFloat32)
    results.append(bench_percentile(big_float, "float32", args.repeats))
    del big_float
    results.append(bench_resample(lung1, "linear", sitk.sitkLinear, 3))
    results.append(bench_resample(lung1, "bspline", sitk.sitkBSpline3, 2))
    results.append(bench_pipeline(lung1, 2))
    print_table(results)
    print(f"\nCPU cores: {os.cpu_count()}; total benchmark time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
