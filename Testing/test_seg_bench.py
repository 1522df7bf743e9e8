"""Independent cross-check of our sliding-window blending against MONAI's `sliding_window_inference`.

Runs part 2 of `python -m ProstateAILib.bench` once (catalog gland model, ProstateX-0000 T2 on its
working grid, overlap 0.5, Gaussian sigma 1/8, batch 2, no flips, 1 torch thread): ~15 s on 2 busy
CPU cores.

What may differ between the two, and the bounds used:
- Window placement. Ours spreads the windows evenly, MONAI steps by int(patch * (1 - overlap)) and moves
  the last window back to the border (128 voxels, patch 80: ours 0/24/48, MONAI 0/40/48). A network's
  output depends on where a window sits, so on the whole volume the two legitimately differ (how much
  depends on the model; it is printed by the benchmark, not asserted). The checks therefore use a centre
  crop on which both place their windows at the same starts (`bench.aligned_crop`).
- Weight map. Both use exp(-d^2 / 2 sigma^2) with sigma = patch / 8 clamped at 1e-3, but ours is scaled to
  max 1 before the clamp and MONAI's is not (for even patch sizes its max is < 1), so the per-voxel ratio
  of the two maps varies by a factor k = max(ratio) / min(ratio) (~1.034 for 16 x 80 x 80). Rescaling the
  weights of some windows by at most k moves a weighted mean of probabilities in [0, 1] by at most
  (sqrt(k) - 1) / (sqrt(k) + 1) (~0.0085): that is the bound with MONAI's own map. Given our map
  (`roi_weight_map`), the same windows and the same per-window softmax, the blends must agree to float
  rounding: bound 1e-5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.data


def test_sliding_window_matches_monai(prostatex_data):
    pytest.importorskip("monai")
    pytest.importorskip("torch")
    from monai.data.utils import compute_importance_map

    from ProstateAILib import bench, inference

    t2 = prostatex_data / "ProstateX-0000" / "t2w"
    if not t2.exists():
        pytest.skip(f"{t2} not found")
    # 1 thread: same numbers, and far faster than 2 OpenMP threads on a 2-core machine that is busy
    result = bench.compare_sliding_window(t2, repeat=1, threads=1)

    # the aligned crop really has identical windows, and they overlap (blending is exercised)
    crop = result["aligned_crop"]
    sizes = [b - a for a, b in crop["crop_zyx"]]
    patch = tuple(result["patch_zyx"])
    for size, p, starts in zip(sizes, patch, crop["window_starts_zyx"]):
        assert starts == bench.monai_window_starts(size, p, result["overlap"])
    assert math.prod(len(s) for s in crop["window_starts_zyx"]) >= 2

    # same windows, same weights: the blending code must give the same numbers
    same = result["aligned_crop_same_weights"]
    assert same["max_abs_diff"] <= 1e-5
    assert same["argmax_dice"] >= 0.99

    # same windows, MONAI's own Gaussian map: bounded by the maps' ratio spread (module docstring)
    ours_map = inference.gaussian_weights(patch, 1.0 / 8)
    monai_map = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125).numpy()
    ratio = ours_map / monai_map
    k = float(ratio.max() / ratio.min())
    bound = (math.sqrt(k) - 1) / (math.sqrt(k) + 1) + 1e-5
    assert bound < 0.01
    assert crop["max_abs_diff"] <= bound
    assert crop["argmax_dice"] >= 0.99

    # whole volume: both produce valid, timed probability maps (placement differs: not asserted equal)
    assert result["ours_median_wall_s"] > 0 and result["monai_median_wall_s"] > 0
    assert np.isfinite(result["ratio_wall"]) and np.isfinite(result["ratio_cpu"])
    assert 0.0 <= result["whole_volume"]["max_abs_diff"] <= 1.0
