"""Benchmark: `prostateai segment` end to end, and our sliding window against MONAI's.

    python -m ProstateAILib.bench [--repeat 3] [--threads 2] [--out bench-output/seg]   (or: make bench)

Target (issue): on a 384 x 384 x 19 T2 (ProstateX-0000), end-to-end (load -> files written) <= 5 s
and peak memory <= 2 GB on the 2-core CPU, printed beside MONAI's `sliding_window_inference` with the
same network in the same run, as a ratio.

1. End to end: `python -m ProstateAILib.cli segment --t2 ... --threads N` as a child process, N runs.
   Wall time is the whole command (interpreter start, imports, read, both models, writing); peak
   memory is that child's own maximum resident set size (`os.wait4`). The stage timings come from the
   report.json the command writes; "unaccounted" = wall - report total (interpreter start, imports).
2. Sliding window: the catalog gland model on the T2's working grid (built exactly as the pipeline
   does), ours (`inference.sliding_window`) against `monai.inferers.sliding_window_inference` with the
   same patch, overlap 0.5, Gaussian weights (sigma 1/8), batch 2, no flips and the same predictor
   (softmax of each window's logits before blending, as ours does). Alternating order, median of N.
   Agreement: max |p_ours - p_monai| and the Dice of the two argmax masks (a) on the whole volume,
   (b) on a centre crop where both place their windows at the same starts (`aligned_crop`) and (c) on that
   crop with MONAI given our weight map. Expected differences: (a) window placement: ours spreads the
   windows evenly, MONAI steps by int(patch * (1 - overlap)) and moves the last one back to the border
   (128 voxels, patch 80: ours 0/24/48, MONAI 0/40/48), and a network's output depends on where the
   window sits; (b) weight map: same Gaussian and 1e-3 floor, but ours is scaled to max 1 before the
   floor and MONAI's is not (its max is < 1 for even patch sizes), a <= 3.5 % relative reweighting,
   which moves a blend by at most ~0.0085 (Testing/test_seg_bench.py derives the bound); (c) nothing
   but float rounding (padding, batching, blending and normalisation are otherwise the same).

The machine may be shared: wall times are inflated by other processes (the load average is printed),
CPU time of the process is the steadier number; ratio = ours / MONAI (< 1: we are faster), and both are
measured in the same run so the ratio stays meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ProstateAICore.imageio import write_text

DATA = Path(os.environ.get("PROSTATEAI_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
CASE_T2 = DATA / "prostatex" / "ProstateX-0000" / "t2w"
TARGET_SECONDS = 5.0
TARGET_BYTES = 2 * 1024 ** 3


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------- 1. end to end

def run_segment_once(t2: Path, out: Path, threads: int, extra_args=()) -> dict:
    """One `segment` child process: wall s, CPU s and peak RSS bytes of that child, and its report."""
    cmd = [sys.executable, "-m", "ProstateAILib.cli", "segment", "--t2", str(t2), "--out", str(out),
           "--threads", str(threads), *extra_args]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
        # wait4, not Popen.wait: it also returns this child's own rusage (CPU time, peak RSS)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        stdout.seek(0)
        stderr.seek(0)
        text, errors = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{errors}")
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": int(usage.ru_maxrss) * 1024,  # Linux: kilobytes
            "stdout": text.strip(), "timings_s": report.get("timings_s", {})}


def bench_end_to_end(t2: Path, repeat: int, threads: int, extra_args=()) -> dict:
    runs = []
    with tempfile.TemporaryDirectory(prefix="prostateai-bench-") as tmp:
        for i in range(repeat):
            out = Path(tmp) / f"run{i}"
            runs.append(run_segment_once(t2, out, threads, extra_args))
            runs[-1]["load_average"] = load_average()
            shutil.rmtree(out, ignore_errors=True)
    stages = sorted({k for r in runs for k in r["timings_s"]}, key=list(runs[0]["timings_s"]).index)
    median_stages = {k: statistics.median(r["timings_s"][k] for r in runs if k in r["timings_s"]) for k in stages}
    median_stages["unaccounted (start, imports)"] = statistics.median(
        r["wall_s"] - r["timings_s"].get("total", 0.0) for r in runs)
    wall = statistics.median(r["wall_s"] for r in runs)
    peak = max(r["peak_rss_bytes"] for r in runs)
    return {"command": f"python -m ProstateAILib.cli segment --t2 {t2} --out TMP --threads {threads} "
                       + " ".join(extra_args),
            "runs": runs, "median_wall_s": wall, "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "peak_rss_bytes": peak, "median_stage_timings_s": median_stages,
            "time_target_s": TARGET_SECONDS, "time_pass": wall <= TARGET_SECONDS,
            "memory_target_bytes": TARGET_BYTES, "memory_pass": peak <= TARGET_BYTES}


# ---------------------------------------------------------------- 2. sliding window vs MONAI

def monai_window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Where MONAI's `sliding_window_inference` starts its windows along one (padded) axis."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    size_p = max(size, patch)
    interval = _get_scan_interval((size_p,), (patch,), 1, (overlap,))
    return sorted({int(s[0].start) for s in dense_patch_slices((size_p,), (patch,), interval)})


def aligned_crop(shape, patch, overlap: float) -> tuple[slice, ...]:
    """Centre crop (z, y, x) of the largest size <= `shape` on which our windows and MONAI's start at
    the same places: ours are spread evenly, MONAI's step by int(patch * (1 - overlap)) with the last
    one moved back to the border, which coincide when (size - patch) is a multiple of the step."""
    from .inference import window_starts

    crop = []
    for size, p in zip(shape, patch):
        n = size
        while n > p and window_starts(n, p, overlap) != monai_window_starts(n, p, overlap):
            n -= 1
        before = (size - n) // 2
        crop.append(slice(before, before + n))
    return tuple(crop)


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Max / mean |difference| of two (K, Z, Y, X) probability maps and the Dice of their argmax masks
    (mean over the foreground labels; both empty counts as 1)."""
    diff = np.abs(ours - theirs)
    a, b = ours.argmax(0), theirs.argmax(0)
    dice = []
    for label in range(1, ours.shape[0]):
        x, y = a == label, b == label
        total = int(x.sum() + y.sum())
        dice.append(1.0 if total == 0 else 2.0 * int((x & y).sum()) / total)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "voxels_diff_over_0.01": int((diff.max(0) > 0.01).sum()),
            "argmax_dice": float(np.mean(dice)), "argmax_voxels_differing": int((a != b).sum()),
            "foreground_voxels": int((a > 0).sum())}


def compare_sliding_window(t2_path=CASE_T2, repeat: int = 3, threads: int = 2, model_name: str | None = None,
                           batch_size: int = 2, overlap: float = 0.5, aligned: bool = True) -> dict:
    """Time ours against MONAI's sliding window on the T2's working grid and measure their agreement.

    Both get the same network, the same input and the same per-window softmax. The whole-volume
    comparison is timed (alternating order, median of `repeat`); the aligned-crop comparison (same
    window placement, see `aligned_crop`) is run once and isolates the blending itself.
    """
    import torch

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _compare(t2_path, repeat, model_name, batch_size, overlap, aligned)
    finally:
        torch.set_num_threads(previous_threads)  # callers (tests) keep their own setting


def _compare(t2_path, repeat: int, model_name: str | None, batch_size: int, overlap: float, aligned: bool) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from . import inference, models, pipeline, preprocess

    catalog = models.load_catalog()
    name = model_name or models.default_model("gland", catalog)
    model, meta = models.load(name, device="cpu", catalog=catalog)
    inputs = pipeline.read_inputs(t2_path)
    volume, _ = preprocess.to_working_image(pipeline._channels_for(meta, inputs),
                                            tuple(meta["preprocess"]["spacing_xyz_mm"]), meta.get("channels"))
    patch = tuple(int(p) for p in meta.get("inference", {}).get("patch_zyx", (16, 80, 80)))

    net = _TimedNetwork(model)  # both call the network through this: time outside it = blending overhead

    def ours(vol):
        return inference.sliding_window(net, vol, patch, overlap=overlap, flip_axes=(), batch_size=batch_size,
                                        device="cpu")

    def predictor(x):  # what ours does per window: forward (never batch 1 on CPU), then softmax
        return torch.softmax(inference._forward(net, x).float(), dim=1)

    def theirs(vol, weight_map=None):
        with torch.no_grad():
            out = sliding_window_inference(torch.from_numpy(np.ascontiguousarray(vol))[None], roi_size=patch,
                                           sw_batch_size=batch_size, predictor=predictor, overlap=overlap,
                                           mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0,
                                           roi_weight_map=weight_map)
        return out[0].numpy()

    def timed(func, vol):
        net.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        result = func(vol)
        return result, time.perf_counter() - wall, time.process_time() - cpu, net.wall

    with torch.no_grad():  # warm-up (oneDNN primitives, allocator) so the first timed call is not penalised
        inference._forward(model, torch.zeros((batch_size, volume.shape[0]) + patch))
    times = {"ours": {"wall": [], "cpu": [], "network_wall": []}, "monai": {"wall": [], "cpu": [], "network_wall": []}}
    results = {}
    for i in range(max(1, repeat)):
        order = [("ours", ours), ("monai", theirs)]
        for key, func in (order if i % 2 == 0 else order[::-1]):
            results[key], wall, cpu, network = timed(func, volume)
            times[key]["wall"].append(wall)
            times[key]["cpu"].append(cpu)
            times[key]["network_wall"].append(network)
    shape = tuple(volume.shape[1:])
    windows = [inference.window_starts(max(s, p), p, overlap) for s, p in zip(shape, patch)]
    summary = {
        "model": name, "working_volume_czyx": list(volume.shape), "patch_zyx": list(patch), "overlap": overlap,
        "batch_size": batch_size, "torch_threads": torch.get_num_threads(), "repeat": max(1, repeat),
        "windows": int(np.prod([len(w) for w in windows])),
        "window_starts_zyx": {"ours": windows,
                              "monai": [monai_window_starts(s, p, overlap) for s, p in zip(shape, patch)]},
        "ours_s": times["ours"], "monai_s": times["monai"],
        "ours_median_wall_s": statistics.median(times["ours"]["wall"]),
        "monai_median_wall_s": statistics.median(times["monai"]["wall"]),
        "ours_median_cpu_s": statistics.median(times["ours"]["cpu"]),
        "monai_median_cpu_s": statistics.median(times["monai"]["cpu"]),
        "whole_volume": agreement(results["ours"], results["monai"]),
    }
    for key in ("ours", "monai"):  # wall time outside the network: padding, window extraction, blending
        summary[f"{key}_median_overhead_s"] = statistics.median(
            w - n for w, n in zip(times[key]["wall"], times[key]["network_wall"]))
    summary["ratio_wall"] = summary["ours_median_wall_s"] / summary["monai_median_wall_s"]
    summary["ratio_cpu"] = summary["ours_median_cpu_s"] / summary["monai_median_cpu_s"]
    if aligned:
        crop = aligned_crop(shape, patch, overlap)
        sub = np.ascontiguousarray(volume[(slice(None),) + crop])
        mine = ours(sub)
        starts = [inference.window_starts(max(s, p), p, overlap) for s, p in zip(sub.shape[1:], patch)]
        summary["aligned_crop"] = {  # MONAI's own Gaussian map (see module docstring for the difference)
            "crop_zyx": [[c.start, c.stop] for c in crop], "window_starts_zyx": starts, **agreement(mine, theirs(sub))}
        # ... and MONAI given our weight map: only the padding/blending code itself can differ
        summary["aligned_crop_same_weights"] = {
            "crop_zyx": [[c.start, c.stop] for c in crop], "window_starts_zyx": starts,
            **agreement(mine, theirs(sub, torch.from_numpy(inference.gaussian_weights(patch, 1.0 / 8))))}
    return summary


class _TimedNetwork:
    """Calls the model and adds up the wall time spent inside it."""

    def __init__(self, model):
        self.model, self.wall = model, 0.0

    def reset(self) -> None:
        self.wall = 0.0

    def __call__(self, batch):
        start = time.perf_counter()
        out = self.model(batch)
        self.wall += time.perf_counter() - start
        return out


# ---------------------------------------------------------------- 3. time against input size

SIZE_CASES = (  # (label, path under DATA); the 512 x 512 x 40 one is made from PROMISE12 case00 (`_large_case`)
    ("picai_10000 256x256x12, 72 mm field", "picai/picai_10000_1000000/t2w.nii.gz"),
    ("ProstateX-0000 384x384x19, 192 mm", "prostatex/ProstateX-0000/t2w"),
    ("PROMISE12 case04 256x256x46, 201 mm", "promise12/case04_t2.nii.gz"),
    ("case00 resampled 512x512x40, 155 mm", "promise12/case00_t2.nii.gz"),
)
# PROMISE12 files carry a nominal 1 x 1 x 3.6 mm voxel size, which makes their glands look 1.3-1.6x too
# large per axis (a 200 mL "gland", many windows); the bench gives them their group's calibrated voxel
# size (Resources/Models/promise12_calibrated_dataset.json), as training does.
CALIBRATED = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "promise12_calibrated_dataset.json"


def _calibrated(image, relative: str):
    import json

    import SimpleITK as sitk

    name = Path(relative).name.removesuffix("_t2.nii.gz")
    entries = {e["name"]: e for e in json.loads(CALIBRATED.read_text())["training"]}
    if not relative.startswith("promise12/") or name not in entries:
        return image
    image = sitk.Image(image)
    image.SetSpacing([float(v) for v in entries[name]["spacing"]])
    return image


def _large_case(image):
    """PROMISE12 case00 (256 x 256 x 47, 155 mm field at its calibrated voxel size) resampled (B-spline) to
    512 x 512 x 40 over the same field: the largest T2 the speed target names, with real anatomy."""
    import SimpleITK as sitk

    size = (512, 512, 40)
    spacing = [image.GetSpacing()[i] * image.GetSize()[i] / size[i] for i in range(3)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkBSpline, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, image.GetPixelID())


def bench_sizes(repeat: int = 2, threads: int = 2) -> list[dict]:
    """Per input size: `pipeline.segment` in one warm process (models loaded, as in the persistent
    worker), with the localiser and over the whole volume, and MONAI's sliding window over the whole
    working volume with the same network, patch, overlap and flip TTA (network only: a floor for any
    whole-volume pass). Median of `repeat`."""
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from . import inference, models, pipeline, preprocess

    torch.set_num_threads(threads)
    warm = pipeline.read_inputs(DATA / SIZE_CASES[1][1])
    pipeline.segment(warm, threads=threads, lesions=False)  # exports / loads the models once, untimed
    rows = []
    for label, relative in SIZE_CASES:
        inputs = pipeline.read_inputs(DATA / relative)
        t2 = _calibrated(inputs.t2, relative)
        inputs = pipeline.prepare_inputs(_large_case(t2) if "512x512" in label else t2)
        row = {"case": label, "size": list(inputs.t2.GetSize()),
               "field_mm": [round(n * s) for n, s in zip(inputs.t2.GetSize(), inputs.t2.GetSpacing())]}
        for key, localiser in (("localised", "auto"), ("whole_volume", None)):
            times, reports = [], []
            for _ in range(max(1, repeat)):
                start = time.perf_counter()
                result = pipeline.segment(inputs, threads=threads, lesions=False, localiser=localiser)
                times.append(time.perf_counter() - start)
                reports.append(result.report)
            row[f"{key}_s"] = statistics.median(times)
            row[f"{key}_gland_s"] = statistics.median(r["timings_s"]["gland"] for r in reports)
            row[f"{key}_ml"] = reports[0]["volumes_ml"]["prostate"]
            if key == "localised":
                row["localisation"] = reports[0]["localisation"]
        model, meta = models.load(models.default_model("gland"))
        volume, _ = preprocess.to_working_image(pipeline._channels_for(meta, pipeline.canonical_inputs(inputs)),
                                                tuple(meta["preprocess"]["spacing_xyz_mm"]), meta.get("channels"))
        settings = meta.get("inference", {})
        patch = inference.window_patch(settings, volume.shape[1:], model.divisor)
        tensor = torch.from_numpy(np.ascontiguousarray(volume))[None]

        def predictor(x):
            return torch.softmax(inference._forward(model, x).float(), dim=1)

        times = []
        for _ in range(max(1, repeat)):
            start = time.perf_counter()
            with torch.no_grad():
                for flip in ([], [4]):  # the same flip TTA as ours
                    x = torch.flip(tensor, flip) if flip else tensor
                    sliding_window_inference(x, roi_size=patch, sw_batch_size=2, predictor=predictor,
                                             overlap=settings.get("overlap", 0.5), mode="gaussian", sigma_scale=0.125)
            times.append(time.perf_counter() - start)
        row["monai_whole_volume_s"] = statistics.median(times)
        row["ratio_localised_gland_to_monai"] = row["localised_gland_s"] / row["monai_whole_volume_s"]
        with tempfile.TemporaryDirectory(prefix="prostateai-bench-size-") as tmp:  # as a new process, end to end
            source = Path(tmp) / "t2.nii.gz"
            sitk.WriteImage(inputs.t2, str(source))
            row["new_process_s"] = run_segment_once(source, Path(tmp) / "out", threads, ("--no-lesions",))["wall_s"]
        rows.append(row)
    return rows


def print_sizes(rows: list[dict]) -> None:
    print("3. Time against input size (one warm process: models loaded; gland + zones, no lesions; "
          f"target <= {TARGET_SECONDS:.0f} s up to 512 x 512 x 40)")
    print(f"   {'input':<38} {'localised':>10} {'whole vol.':>10} {'gland pass':>11} {'MONAI whole':>12} "
          f"{'ratio':>6} {'box':>6} {'new process':>12}  verdict")
    for r in rows:
        box = r["localisation"].get("box_fraction")
        print(f"   {r['case']:<38} {r['localised_s']:9.2f}s {r['whole_volume_s']:9.2f}s {r['localised_gland_s']:10.2f}s "
              f"{r['monai_whole_volume_s']:11.2f}s {r['ratio_localised_gland_to_monai']:6.2f} "
              f"{(f'{box:.0%}' if box is not None else 'none'):>6} {r['new_process_s']:11.2f}s  "
              f"{_verdict(max(r['localised_s'], r['new_process_s']) <= TARGET_SECONDS)}"
              + (f"  ({r['localisation']['fallback']})" if r["localisation"].get("fallback") else ""))
    print("   localised / whole vol.: `segment` with and without the coarse localiser; gland pass: the localised "
          "gland stage (preprocessing, localiser, windows, resampling back); MONAI whole: its sliding window over the "
          "whole working volume, network only, same patch/overlap/flip TTA; ratio = gland pass / MONAI whole; "
          "box: share of the working volume the fine windows had to cover; new process: `prostateai segment` on the "
          "image written to NIfTI, as a new process (interpreter start, imports, reading, writing), the ONNX "
          "exports cached; the verdict needs both the warm and the new-process time <= the target.")


# ---------------------------------------------------------------- 4. persistent worker

WORKER_TARGET_S = 2.0


def bench_worker(t2: Path, threads: int = 2, runs: int = 3) -> dict:
    """`segment` submitted `runs` times to one persistent worker (`ProstateAICore.jobs.Worker`, what the
    Slicer module and the browser app use): the first run pays the imports and the model exports, the
    next ones only the work (target <= 2 s for a second run)."""
    from ProstateAICore import jobs

    times = []
    worker = jobs.Worker(env=jobs.job_environment(), preload=("ProstateAILib.pipeline",))
    try:
        with tempfile.TemporaryDirectory(prefix="prostateai-bench-worker-") as tmp:
            for run in range(runs):
                start = time.perf_counter()
                job = worker.submit("ProstateAILib.cli", ["segment", "--t2", str(t2), "--out", str(Path(tmp) / f"run{run}"),
                                                           "--threads", str(threads), "--no-lesions"])
                if job.wait(timeout=600) != "done":
                    raise RuntimeError(f"worker run {run + 1} failed: {job.error}")
                times.append(time.perf_counter() - start)
    finally:
        worker.close()
    later = statistics.median(times[1:]) if len(times) > 1 else times[0]
    return {"runs_s": times, "later_median_s": later, "target_s": WORKER_TARGET_S, "pass": later <= WORKER_TARGET_S}


def print_worker(w: dict) -> None:
    print("4. Persistent worker (Slicer module / browser app): `segment` on the same worker, one after another")
    print("   runs: " + ", ".join(f"{t:.2f} s" for t in w["runs_s"])
          + f"; second and later (median) {w['later_median_s']:.2f} s   target <= {w['target_s']:.0f} s   "
          + _verdict(w["pass"]))


# ---------------------------------------------------------------- report

def _gb(n: float) -> str:
    return f"{n / 1024 ** 3:.2f} GB"


def print_end_to_end(e2e: dict) -> None:
    print(f"1. End to end: {e2e['command']}")
    for i, r in enumerate(e2e["runs"], 1):
        print(f"   run {i}: {r['wall_s']:6.2f} s wall, {r['cpu_s']:6.2f} s CPU, peak RSS {_gb(r['peak_rss_bytes'])}, "
              f"report total {r['timings_s'].get('total', float('nan')):.2f} s, load avg {r['load_average']}")
        print(f"          {r['stdout']}")
    wall, peak = e2e["median_wall_s"], e2e["peak_rss_bytes"]
    print(f"   median wall time {wall:6.2f} s   target <= {TARGET_SECONDS:.0f} s   {_verdict(e2e['time_pass'])}"
          f"  ({wall / TARGET_SECONDS:.1f}x the target; median CPU time {e2e['median_cpu_s']:.2f} s)")
    print(f"   peak memory      {_gb(peak):>8}   target <= {_gb(TARGET_BYTES)}   {_verdict(e2e['memory_pass'])}")
    print("   stage timings (report.json timings_s, median of runs):")
    for key, value in e2e["median_stage_timings_s"].items():
        print(f"      {key:<30} {value:7.3f} s")


def print_sliding_window(sw: dict) -> None:
    c, z, y, x = sw["working_volume_czyx"]
    print(f"2. Sliding window, model {sw['model']} on the working grid {c} x {z} x {y} x {x} (C, Z, Y, X): "
          f"patch {'x'.join(map(str, sw['patch_zyx']))}, overlap {sw['overlap']}, Gaussian sigma 1/8, "
          f"batch {sw['batch_size']}, no flips, {sw['windows']} windows, {sw['torch_threads']} torch threads, "
          f"median of {sw['repeat']} (alternating order)")
    print(f"   window starts (z, y, x): ours {sw['window_starts_zyx']['ours']}, "
          f"MONAI {sw['window_starts_zyx']['monai']}")
    print(f"   {'':<36} {'wall (s)':>9} {'CPU (s)':>9} {'outside the network (s)':>24}")
    for key, title in (("ours", "ours  inference.sliding_window"), ("monai", "MONAI sliding_window_inference")):
        print(f"   {title:<36} {sw[key + '_median_wall_s']:9.3f} {sw[key + '_median_cpu_s']:9.3f} "
              f"{sw[key + '_median_overhead_s']:24.3f}")
    print(f"   {'ratio ours / MONAI':<36} {sw['ratio_wall']:9.3f} {sw['ratio_cpu']:9.3f}")
    print("   per-round wall s, ours: " + ", ".join(f"{v:.2f}" for v in sw["ours_s"]["wall"])
          + "; MONAI: " + ", ".join(f"{v:.2f}" for v in sw["monai_s"]["wall"]))
    for key, title in (("whole_volume", "whole volume"), ("aligned_crop", "aligned crop"),
                       ("aligned_crop_same_weights", "aligned crop, MONAI given our weight map")):
        if key not in sw:
            continue
        a = sw[key]
        where = f" {a['crop_zyx']} (windows at {a['window_starts_zyx']} in both)" if key != "whole_volume" else ""
        print(f"   agreement, {title}{where}: max |dp| {a['max_abs_diff']:.2e}, mean |dp| {a['mean_abs_diff']:.2e}, "
              f"{a['voxels_diff_over_0.01']} voxels differ by > 0.01; argmax Dice {a['argmax_dice']:.5f} "
              f"({a['argmax_voxels_differing']} of {a['foreground_voxels']} foreground voxels differ)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (segment --threads and ours/MONAI)")
    parser.add_argument("--out", default="bench-output/seg", help="folder for summary.json")
    parser.add_argument("--t2", default=str(CASE_T2), help="T2 DICOM folder or image (default: ProstateX-0000)")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--skip-sliding-window", action="store_true")
    parser.add_argument("--skip-sizes", action="store_true", help="skip the time-against-input-size table")
    parser.add_argument("--skip-worker", action="store_true", help="skip the persistent-worker timing")
    args = parser.parse_args(argv)

    t2 = Path(args.t2)
    if not t2.exists():
        print(f"bench: T2 '{t2}' not found: the benchmark needs ../shared/data/prostatex beside the repository "
              "(or set PROSTATEAI_SHARED_DATA to the shared data folder).", file=sys.stderr)
        return 2
    try:
        import monai  # noqa: F401
    except ImportError:
        if not args.skip_sliding_window:
            print("bench: MONAI is not installed (pip install monai); it is the reference for part 2.",
                  file=sys.stderr)
            return 2
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = {"t2": str(t2), "cpu_cores": os.cpu_count(), "torch": torch.__version__,
               "monai": sys.modules["monai"].__version__ if "monai" in sys.modules else None,
               "threads": args.threads, "repeat": args.repeat,
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load_average": {"start": load_average()}}
    print(f"ProstateAI segmentation benchmark: {os.cpu_count()} CPU cores, torch {summary['torch']}, "
          f"MONAI {summary['monai']}, {args.threads} threads, OMP_NUM_THREADS={summary['OMP_NUM_THREADS']}")
    print(f"T2: {t2}")
    print(f"load average (1, 5, 15 min) at start: {summary['load_average']['start']}\n")

    if not args.skip_end_to_end:
        summary["end_to_end"] = bench_end_to_end(t2, args.repeat, args.threads)
        summary["load_average"]["after_end_to_end"] = load_average()
        print_end_to_end(summary["end_to_end"])
        print(f"   load average after part 1: {summary['load_average']['after_end_to_end']}\n")

    if not args.skip_sliding_window:
        summary["sliding_window"] = compare_sliding_window(t2, args.repeat, args.threads)
        summary["load_average"]["after_sliding_window"] = load_average()
        print_sliding_window(summary["sliding_window"])
        print(f"   load average after part 2: {summary['load_average']['after_sliding_window']}\n")

    if not args.skip_sizes:
        summary["sizes"] = bench_sizes(max(1, min(args.repeat, 2)), args.threads)
        summary["load_average"]["after_sizes"] = load_average()
        print_sizes(summary["sizes"])
        print(f"   load average after part 3: {summary['load_average']['after_sizes']}\n")

    if not args.skip_worker:
        summary["worker"] = bench_worker(t2, args.threads)
        print_worker(summary["worker"])
        print(f"   load average after part 4: {load_average()}\n")

    summary["total_s"] = time.perf_counter() - started
    write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    print(f"total benchmark time {summary['total_s']:.0f} s; summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
