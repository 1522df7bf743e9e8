"""Network shape/size and sliding-window inference (blending, padding, TTA)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ProstateAILib import inference, network


class VoxelwiseModel(torch.nn.Module):
    """Logits (0, x): softmax foreground = sigmoid(x), independent of the window -> any correct
    blending must reproduce sigmoid(volume) exactly, whatever the overlap and weights."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


def test_network_output_shapes_and_size():
    model = network.build_network()
    assert model.divisor == (4, 16, 16)
    n = network.count_parameters(model)
    assert n <= 2.5e6  # float16 model file <= 5 MB, float32 <= 10 MB (limit 20 MB)
    buffer = io.BytesIO()
    torch.save({k: v.half() for k, v in model.state_dict().items()}, buffer)
    assert buffer.tell() <= 5 * 1024 * 1024
    x = torch.randn(1, 1, 16, 32, 48)
    model.train()
    outputs = model(x)
    assert [tuple(o.shape) for o in outputs] == [(1, 2, 16, 32, 48), (1, 2, 16, 16, 24), (1, 2, 8, 8, 12)]
    model.eval()
    with torch.no_grad():
        assert tuple(model(x).shape) == (1, 2, 16, 32, 48)


def test_network_config_roundtrip_and_concat_variant():
    cfg = network.NetConfig(in_channels=3, out_channels=3, features=(4, 8, 8, 8, 8), skip="concat", deep_supervision=False)
    again = network.NetConfig.from_dict(cfg.to_dict())
    assert again == cfg
    model = network.build_network(cfg.to_dict()).train()
    assert tuple(model(torch.randn(2, 3, 8, 32, 32)).shape) == (2, 3, 8, 32, 32)


def test_gaussian_weights():
    w = inference.gaussian_weights((8, 16, 16))
    assert tuple(w.shape) == (8, 16, 16)
    assert float(w.max()) == pytest.approx(1.0) and float(w.min()) >= 1e-3
    np.testing.assert_allclose(w, np.flip(w, [0, 1, 2]), atol=1e-7)  # symmetric about the patch centre
    assert w[4, 8, 8] > w[0, 8, 8] and w[4, 8, 8] > w[4, 0, 0]


@pytest.mark.parametrize("size,patch,overlap", [(100, 32, 0.5), (32, 32, 0.5), (20, 32, 0.5), (47, 16, 0.1), (171, 80, 0.25)])
def test_window_starts_cover_the_axis(size, patch, overlap):
    starts = inference.window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] + patch >= size
    assert all(b - a <= patch * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))
    covered = np.zeros(max(size, patch), bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered[:size].all()


def test_sliding_window_equals_direct_inference_when_window_covers_image():
    torch.manual_seed(0)
    model = network.build_network(network.NetConfig(features=(4, 8, 8, 8, 8))).eval()
    volume = torch.randn(1, 16, 32, 48)
    with torch.no_grad():
        direct = torch.softmax(model(volume[None]), 1)[0].numpy()
    probs = inference.sliding_window(model, volume.numpy(), (16, 32, 48), overlap=0.5)
    np.testing.assert_allclose(probs, direct, atol=1e-6)


def test_small_volume_is_padded_and_cropped_back():
    torch.manual_seed(0)
    model = network.build_network(network.NetConfig(features=(4, 8, 8, 8, 8))).eval()
    volume = torch.randn(1, 10, 20, 30)
    probs = inference.sliding_window(model, volume.numpy(), (16, 32, 32))
    assert probs.shape == (2, 10, 20, 30)
    padded = torch.nn.functional.pad(volume, (1, 1, 6, 6, 3, 3))
    with torch.no_grad():
        direct = torch.softmax(model(padded[None]), 1)[0, :, 3:13, 6:26, 1:31].numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-6)


@pytest.mark.parametrize("overlap,flips,batch", [(0.5, (), 1), (0.25, ((2,),), 3), (0.0, ((0,), (1, 2)), 2)])
def test_blending_is_a_normalised_weighted_average(overlap, flips, batch):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(1, 23, 70, 57)).astype(np.float32)
    probs = inference.sliding_window(VoxelwiseModel(), volume, (8, 32, 32), overlap=overlap, flip_axes=flips, batch_size=batch)
    expected = 1 / (1 + np.exp(-volume[0]))
    np.testing.assert_allclose(probs[1], expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_blending_weights_favour_window_centres():
    """Two windows disagreeing (window-dependent output): the blend follows the Gaussian weights."""

    class WindowId(torch.nn.Module):
        def forward(self, x):  # logit = mean intensity of the window -> differs between windows
            m = x.mean(dim=(1, 2, 3, 4), keepdim=True).expand(-1, 1, *x.shape[2:])
            return torch.cat([torch.zeros_like(m), m * 50], 1)

    volume = np.zeros((1, 4, 4, 48), np.float32)
    volume[..., 24:] = 1.0  # left window sees mostly 0 (p~0.5 ... ), right window mostly 1
    probs = inference.sliding_window(WindowId(), volume, (4, 4, 32), overlap=0.5)[1]
    starts = inference.window_starts(48, 32, 0.5)
    assert starts == [0, 16]
    w = inference.gaussian_weights((4, 4, 32))[0, 0]
    left = 1 / (1 + np.exp(-50 * volume[..., 0:32].mean()))
    right = 1 / (1 + np.exp(-50 * volume[..., 16:48].mean()))
    x = 20  # covered by both windows: position 20 in the left one, 4 in the right one
    expected = (w[20] * left + w[4] * right) / (w[20] + w[4])
    assert probs[0, 0, x] == pytest.approx(expected, abs=1e-5)
    assert probs[0, 0, 0] == pytest.approx(left, abs=1e-5) and probs[0, 0, 47] == pytest.approx(right, abs=1e-5)


def test_keep_largest_component():
    mask = np.zeros((5, 20, 20), bool)
    mask[1:4, 2:10, 2:10] = True
    mask[2, 15:17, 15:17] = True
    out = inference.keep_largest_component(mask)
    assert out.sum() == 3 * 8 * 8 and not out[2, 15, 15]
    assert not inference.keep_largest_component(np.zeros((3, 4, 4), bool)).any()


def test_keep_largest_component_matches_scipy_26_connectivity():
    """Independent reference: scipy.ndimage.label with the full 3x3x3 structure on random blobs,
    where components touching only at corners must merge (26-connectivity)."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = ndimage.binary_opening(rng.random((12, 40, 40)) > 0.55)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(labels.ravel())[1:]
        if n < 2 or (sizes == sizes.max()).sum() > 1:
            continue  # ties have no unique answer
        expected = labels == 1 + int(np.argmax(sizes))
        np.testing.assert_array_equal(inference.keep_largest_component(mask), expected)
    corner = np.zeros((3, 6, 6), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = corner[2, 2, 2] = True  # diagonal chain: one 26-component
    corner[0, 5, 5] = True
    assert inference.keep_largest_component(corner).sum() == 3


class CountingModel(VoxelwiseModel):
    def __init__(self):
        super().__init__()
        self.windows = 0

    def forward(self, x):
        self.windows += x.shape[0]
        return super().forward(x)


def test_region_windows_cover_the_region_only():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(1, 40, 150, 150)).astype(np.float32)
    patch = (16, 48, 48)
    everywhere, model = CountingModel(), CountingModel()
    full = inference.sliding_window(everywhere, volume, patch, overlap=0.25, batch_size=2)
    region = (slice(10, 30), slice(60, 90), slice(50, 120))
    part = inference.sliding_window(model, volume, patch, overlap=0.25, batch_size=2, region=region)
    assert model.windows < everywhere.windows / 3  # 2 x 1 x 2 windows instead of 3 x 4 x 4
    inside = (slice(None),) + region
    np.testing.assert_allclose(part[inside], full[inside], atol=1e-5)  # voxel-wise model: exact inside
    outside = np.ones(volume.shape[1:], bool)
    outside[region] = False
    covered = np.zeros(volume.shape[1:], bool)  # windows may reach beyond the region: those voxels count too
    covered[10:30, 51:99, 50:120] = True  # z starts 10, 14; y one window at 51; x starts 50, 72
    assert np.all(part[1][covered] > 0)
    assert np.all(part[0][outside & ~covered] == 1.0) and np.all(part[1][outside & ~covered] == 0.0)
    whole = (slice(0, 40), slice(0, 150), slice(0, 150))
    np.testing.assert_allclose(inference.sliding_window(VoxelwiseModel(), volume, patch, overlap=0.25, region=whole),
                               full, atol=1e-6)


def test_region_smaller_than_a_window_gets_one_centred_window_inside_the_volume():
    assert inference._region_starts(100, 48, 0.25, slice(40, 60), 0) == [26]
    assert inference._region_starts(100, 48, 0.25, slice(0, 10), 0) == [0]
    assert inference._region_starts(100, 48, 0.25, slice(95, 100), 0) == [52]
    assert inference._region_starts(40, 48, 0.25, slice(5, 30), 4) == [0]  # padded axis: the one window


def test_touches_inner_border():
    mask = np.zeros((10, 20, 20), bool)
    region = (slice(2, 8), slice(5, 15), slice(0, 20))
    mask[4, 8, 8] = True
    assert not inference._touches_inner_border(mask, region, mask.shape)
    mask[4, 8, 0] = True  # on the volume's own edge: not a cut
    assert not inference._touches_inner_border(mask, region, mask.shape)
    mask[2, 8, 8] = True  # on the region's first slice, inside the volume: cut
    assert inference._touches_inner_border(mask, region, mask.shape)


def test_region_doubt_names_a_cut_gland_or_an_empty_box():
    mask = np.zeros((20, 60, 60), bool)
    region = (slice(2, 18), slice(10, 50), slice(10, 50))
    spacing = (1.5, 1.5, 3.6)  # 8.1 uL per voxel: 5 mL = 618 voxels
    assert "less than 5 mL" in inference._region_doubt(mask, region, spacing)
    mask[6:14, 20:40, 20:40] = True  # 3200 voxels, inside the box
    assert inference._region_doubt(mask, region, spacing) is None
    mask[6:14, 20:40, 45:50] = True  # reaches the box's last column (not the volume's)
    assert "edge of the localised box" in inference._region_doubt(mask, region, spacing)


def test_onnxruntime_backend_matches_torch_on_a_real_volume(prostatex_t2, tmp_path, monkeypatch):
    """The ONNX Runtime back end (what `models.load` picks on the CPU) gives the torch network's
    probabilities to 1e-4 on ProstateX-0000's working volume, flip TTA included; the export is cached
    by the model file's sha256 and reused."""
    pytest.importorskip("onnxruntime")
    from ProstateAILib import models, onnx_backend, preprocess

    monkeypatch.setenv("PROSTATEAI_CACHE", str(tmp_path))
    net, meta = models.load("prostate-gland-t2", backend="torch")
    ort, ort_meta = models.load("prostate-gland-t2")
    assert meta["backend"] == "torch" and ort_meta["backend"] == "onnxruntime"
    assert isinstance(ort, onnx_backend.OrtModel) and ort.divisor == net.divisor
    assert len(list(tmp_path.glob("*.onnx"))) == 1  # exported once, into the cache
    volume, _ = preprocess.to_working_image([prostatex_t2], tuple(meta["preprocess"]["spacing_xyz_mm"]))
    patch = tuple(meta["inference"]["patch_zyx"])
    expected = inference.sliding_window(net, volume, patch, overlap=0.25, flip_axes=((2,),))
    actual = inference.sliding_window(ort, volume, patch, overlap=0.25, flip_axes=((2,),))
    assert np.abs(actual - expected).max() <= 1e-4
    assert (expected[1] > 0.5).sum() > 1000  # the comparison covers a real gland
    again, _ = models.load("prostate-gland-t2")  # from the cache: same session output
    np.testing.assert_allclose(inference.sliding_window(again, volume, patch, overlap=0.25),
                               inference.sliding_window(ort, volume, patch, overlap=0.25), atol=1e-6)
    (next(tmp_path.glob("*.onnx"))).write_bytes(b"truncated")  # a damaged cache file is exported again
    repaired, _ = models.load("prostate-gland-t2")
    np.testing.assert_allclose(inference.sliding_window(repaired, volume, patch, overlap=0.25),
                               inference.sliding_window(ort, volume, patch, overlap=0.25), atol=1e-6)
    monkeypatch.setenv("PROSTATEAI_BACKEND", "torch")
    assert models.load("prostate-gland-t2")[1]["backend"] == "torch"


def test_segment_with_a_warm_onnx_cache_never_imports_torch(prostatex_case, tmp_path):
    """A new `segment` process on the ONNX Runtime path with the exports cached does not import torch
    (~2 s of its start) nor onnx (~1.3 s): the 5 s end-to-end budget depends on it."""
    pytest.importorskip("onnxruntime")
    import glob
    import subprocess
    import sys

    if glob.glob("/dev/nvidia[0-9]*") or not sys.platform.startswith("linux"):
        pytest.skip("with a GPU (or off Linux) `auto` asks torch for the device")
    script = ("import sys; from ProstateAILib import pipeline; "
              f"pipeline.run({str(prostatex_case / 't2w')!r}, sys.argv[1], threads=2, lesions=False); "
              "print('torch' in sys.modules, 'onnx' in sys.modules)")
    for run in ("first", "second"):  # the first may export (and import torch); the second must not
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / run)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["False", "False"], done.stdout
    assert (tmp_path / "second" / "prostate.nii.gz").read_bytes() == (tmp_path / "first" / "prostate.nii.gz").read_bytes()
