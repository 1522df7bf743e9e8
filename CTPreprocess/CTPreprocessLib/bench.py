"""Benchmark: our CT steps against the plain numpy / SimpleITK way of doing the same thing.

    python -m CTPreprocessLib.bench            (or: make bench)

1. percentile_window vs np.percentile / np.quantile on a 52 M-voxel CT (lung1 resampled in z to 200
   slices), int16 and float32, with the HU error;
2. resample_to_spacing vs one plain sitk.ResampleImageFilter call;
3. the whole pipeline vs a plain SimpleITK/numpy chain doing the same steps.
Times are the best of a few runs: wall-clock and CPU time of this process (on a shared machine CPU
time is the steadier of the two; SimpleITK filters use several threads, so their CPU time can exceed
wall time). Ratio = ours / reference (< 1: we are faster).
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


class Timing:
    """Best wall-clock and CPU seconds over the runs so far, and the last result."""

    def __init__(self):
        self.wall = self.cpu = math.inf
        self.result = None

    def run(self, func) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.result = func()
        self.wall = min(self.wall, time.perf_counter() - wall)
        self.cpu = min(self.cpu, time.process_time() - cpu)


def race(funcs: list, repeats: int) -> list[Timing]:
    """Time the functions in turn, round after round, so load changes on a shared machine hit all alike."""
    timings = [Timing() for _ in funcs]
    for _ in range(repeats):
        for timing, func in zip(timings, funcs):
            timing.run(func)
    return timings


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
    ours, pct, qnt = race([lambda: percentile_window(ct, 0.6, 0.99), lambda: np.percentile(array, [60.0, 99.0]),
                           lambda: np.quantile(array, [0.6, 0.99])], 3)
    for _ in range(repeats - 3):  # the fast one gets extra runs (cheap)
        ours.run(lambda: percentile_window(ct, 0.6, 0.99))
    error = float(np.max(np.abs(np.array(ours.result) - qnt.result)))
    lo, hi = ours.result
    return {"task": f"percentile_window {label} ({array.size / 1e6:.1f} M voxels)", "ours": ours,
            "rows": [("np.percentile", pct), ("np.quantile", qnt)],
            "note": f"p60/p99 = {lo:.2f} / {hi:.2f} HU, max error vs np.quantile {error:.4f} HU"}


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
    ours, ref = race([lambda: resample_to_spacing(image, spacing, name),
                      lambda: plain_resample(image, spacing, interpolator)], repeats)
    same = np.array_equal(sitk.GetArrayViewFromImage(ours.result), sitk.GetArrayViewFromImage(ref.result))
    return {"task": f"resample_to_spacing {name} -> 1.5 mm {tuple(ours.result.GetSize())}", "ours": ours,
            "rows": [("sitk.ResampleImageFilter", ref)], "note": f"identical voxels: {same}"}


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
    ours, ref = race([lambda: run_pipeline(image, config)[0], lambda: plain_chain(image, size)], repeats)
    a, b = sitk.GetArrayViewFromImage(ours.result), sitk.GetArrayViewFromImage(ref.result)
    diff = int(np.max(np.abs(a.astype(int) - b.astype(int))))
    same_geometry = np.allclose(ours.result.GetOrigin(), ref.result.GetOrigin()) and ours.result.GetSize() == ref.result.GetSize()
    return {"task": "pipeline gaussian+resample+lungs+uint8+crop/pad", "ours": ours,
            "rows": [("plain SimpleITK/numpy chain", ref)],
            "note": f"max voxel difference {diff}, same geometry: {same_geometry}"}


def print_table(results: list[dict]) -> None:
    print(f"{'task':<50} {'ours wall/cpu (s)':>17}  {'reference':<27} {'ref wall/cpu (s)':>16} {'ratio wall/cpu':>15}")
    print("-" * 130)
    for r in results:
        ours = r["ours"]
        for i, (name, ref) in enumerate(r["rows"]):
            task = r["task"] if i == 0 else ""
            mine = f"{ours.wall:.3f} / {ours.cpu:.3f}" if i == 0 else ""
            print(f"{task:<50} {mine:>17}  {name:<27} {ref.wall:>7.3f} / {ref.cpu:.3f} "
                  f"{ours.wall / ref.wall:>7.2f} / {ours.cpu / ref.cpu:.2f}")
        print(f"{'':<50} {r['note']}")


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
    results.append(bench_pipeline(lung1, 3))
    print_table(results)
    print(f"\nCPU cores: {os.cpu_count()}; total benchmark time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
