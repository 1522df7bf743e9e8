"""Benchmark of the MR steps against their references, in one run: `python -m MRStandardizeLib.bench`.

N4 (ProstateX-0000 T2 384x384x19 DICOM and PROMISE12 case38 with an endorectal-coil bias):
  ours "preview" and "full" vs SimpleITK's N4 with all its defaults on the shrink-4 image (timed in
  this run), and bias-field correlation (Pearson, inside the Otsu foreground) against SimpleITK's N4
  with its defaults on the UNSHRUNK image. That reference takes 10+ minutes on 2 cores, so it is
  computed once and cached (with its time) in --cache; pass --refresh to recompute it.
Nyul: fit on 10 PROMISE12 volumes + apply to each, ours vs intensity-normalization's NyulNormalizer,
  with the agreement of landmarks and voxels.
Registration: `registration_bench` (times and gradient correlations before/after on ProstateX-0000).

Times are wall-clock seconds and process CPU seconds (CPU is the fairer number on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ProstateAICore import imageio

from . import nyul
from .n4 import PRESETS, n4_correct

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
N4_CASES = {
    "ProstateX-0000": DATA / "prostatex" / "ProstateX-0000" / "t2w",
    "PROMISE12-case38": DATA / "promise12" / "case38_t2.nii.gz",
}
NYUL_CASES = ["case00", "case01", "case13", "case14", "case25", "case26", "case34", "case37", "case38", "case45"]


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def sitk_default_n4(image: sitk.Image, mask: sitk.Image, shrink: int) -> sitk.Image:
    """SimpleITK's N4 exactly as its examples use it: every parameter default; returns the log field."""
    source = sitk.Cast(image, sitk.sitkFloat32)
    factors = [shrink, shrink, 1] if shrink > 1 else [1, 1, 1]
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.Execute(sitk.Shrink(source, factors), sitk.Shrink(mask, factors))
    return n4.GetLogBiasFieldAsImage(source)


def correlation(field_a: sitk.Image, field_b: sitk.Image, mask: sitk.Image) -> float:
    inside = sitk.GetArrayViewFromImage(mask) > 0
    a = sitk.GetArrayViewFromImage(field_a)[inside].astype(np.float64)
    b = sitk.GetArrayViewFromImage(field_b)[inside].astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


def reference_log_field(name: str, image: sitk.Image, mask: sitk.Image, cache: Path, refresh: bool):
    """SimpleITK N4 defaults at shrink 1, from the cache when present (seconds as measured then)."""
    field_path, info_path = cache / f"{name}_n4_sitk_default_shrink1.nii.gz", cache / f"{name}_n4_sitk_default_shrink1.json"
    if field_path.exists() and info_path.exists() and not refresh:
        return sitk.ReadImage(str(field_path)), json.loads(info_path.read_text()), True
    print(f"  computing the shrink-1 SimpleITK reference for {name} (slow, cached afterwards)...", flush=True)
    with Timer() as t:
        log_field = sitk_default_n4(image, mask, 1)
    info = {"seconds": t.wall, "cpu_seconds": t.cpu}
    imageio.write_image(log_field, field_path)
    imageio.write_text(json.dumps(info), info_path)
    return log_field, info, False


def bench_n4(cache: Path, refresh: bool) -> None:
    print("== N4 bias field ==")
    for name, path in N4_CASES.items():
        image = imageio.read_image(path)
        mask = sitk.OtsuThreshold(sitk.Cast(image, sitk.sitkFloat32), 0, 1, 200)
        ref_field, ref_info, cached = reference_log_field(name, image, mask, cache, refresh)
        ref_bias = sitk.Exp(ref_field)
        with Timer() as t_default:
            default_bias = sitk.Exp(sitk_default_n4(image, mask, 4))
        ref_cpu = ref_info.get("cpu_seconds")
        print(f"{name} {image.GetSize()}: reference SimpleITK N4 defaults shrink 1: {ref_info['seconds']:.1f} s"
              f"{f' ({ref_cpu:.1f} s CPU)' if ref_cpu else ''}{' [cached]' if cached else ''} {ref_info.get('note', '')}")
        print(f"  SimpleITK N4 defaults, shrink 4: {t_default.wall:6.2f} s ({t_default.cpu:6.2f} s CPU)  "
              f"r = {correlation(default_bias, ref_bias, mask):.4f}")
        for quality in PRESETS:
            with Timer() as t:
                result = n4_correct(image, quality=quality)
            r = correlation(result.bias_field, ref_bias, mask)
            print(f"  ours {quality:7s} (shrink {result.shrink_factors}, iterations {result.iterations}): "
                  f"{t.wall:6.2f} s ({t.cpu:6.2f} s CPU)  r = {r:.4f}  "
                  f"time ratio vs SimpleITK shrink 4: {t.wall / t_default.wall:.2f} (CPU {t.cpu / t_default.cpu:.2f}), "
                  f"vs shrink 1: {t.wall / ref_info['seconds']:.3f}")


def bench_nyul() -> None:
    from intensity_normalization import NyulNormalizer
    from intensity_normalization import __version__ as inorm_version
    from intensity_normalization.adapters.images import NumpyImageAdapter

    print(f"== Nyul: fit on {len(NYUL_CASES)} PROMISE12 volumes + apply to each ==")
    images = [sitk.ReadImage(str(DATA / "promise12" / f"{c}_t2.nii.gz")) for c in NYUL_CASES]
    arrays = [sitk.GetArrayFromImage(img) for img in images]
    with Timer() as ours_t:
        model = nyul.fit(images)
        ours = [nyul.apply(img, model) for img in images]
    with Timer() as ref_t:
        adapted = [NumpyImageAdapter(a) for a in arrays]
        normalizer = NyulNormalizer()
        normalizer.fit_population(adapted)
        theirs = [normalizer.transform(a).get_data() for a in adapted]
    landmark_rel = np.max(np.abs(np.subtract(model.standard_landmarks, normalizer.standard_scale))
                          / np.abs(normalizer.standard_scale))
    voxel_rel = max(np.max(np.abs(sitk.GetArrayViewFromImage(o) - t)) / np.max(np.abs(t)) for o, t in zip(ours, theirs))
    print(f"  ours: {ours_t.wall:.2f} s ({ours_t.cpu:.2f} s CPU); intensity-normalization {inorm_version}: "
          f"{ref_t.wall:.2f} s ({ref_t.cpu:.2f} s CPU); ratio {ours_t.wall / ref_t.wall:.3f} (CPU {ours_t.cpu / ref_t.cpu:.3f})")
    print(f"  agreement: standard landmarks max rel diff {landmark_rel:.2e}; voxels max diff / max |ref| {voxel_rel:.2e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(REPO / "bench-output" / "mr"), help="where the shrink-1 N4 references are kept")
    parser.add_argument("--refresh", action="store_true", help="recompute the cached shrink-1 N4 references")
    parser.add_argument("--only", choices=("n4", "nyul", "registration"), help="run one part")
    args = parser.parse_args(argv)
    with Timer() as total:
        if args.only in (None, "nyul"):
            bench_nyul()
        if args.only in (None, "n4"):
            bench_n4(Path(args.cache), args.refresh)
        if args.only in (None, "registration"):
            from . import registration_bench

            registration_bench.main([])
    print(f"bench total {total.wall:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
