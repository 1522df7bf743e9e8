"""Percentile / z-score normalisation at image, patient and dataset level; denoising (real PROMISE12 T2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from MRStandardizeLib import denoise, normalize
from ProstateAICore.errors import InputError


@pytest.fixture(scope="module")
def case(promise12_data):
    image = sitk.ReadImage(str(promise12_data / "case15_t2.nii.gz"))
    mask = sitk.ReadImage(str(promise12_data / "case15_prostate.nii.gz"))
    return image, mask


@pytest.fixture(scope="module")
def pair(promise12_data):
    return [sitk.ReadImage(str(promise12_data / f"{c}_t2.nii.gz")) for c in ("case14", "case20")]


def _array(image):
    return sitk.GetArrayFromImage(image)


def test_percentile_maps_p1_to_0_and_p99_to_1(case):
    image, _ = case
    out = normalize.normalize(image, "percentile")
    assert out.GetPixelID() == sitk.sitkFloat32
    assert out.GetSize() == image.GetSize() and out.GetOrigin() == image.GetOrigin()
    assert out.GetDirection() == image.GetDirection() and out.GetSpacing() == image.GetSpacing()
    p1, p99 = np.percentile(_array(out), [1, 99])
    assert p1 == pytest.approx(0.0, abs=1e-5) and p99 == pytest.approx(1.0, abs=1e-5)


def test_percentile_in_mask_and_configurable_percentiles(case):
    image, mask = case
    out = _array(normalize.normalize(image, "percentile", mask, low_percentile=5, high_percentile=95))
    inside = _array(mask) > 0
    assert np.percentile(out[inside], 5) == pytest.approx(0.0, abs=1e-5)
    assert np.percentile(out[inside], 95) == pytest.approx(1.0, abs=1e-5)


def test_zscore_inside_mask(case):
    image, mask = case
    out = _array(normalize.normalize(image, "zscore", mask))
    gland = out[_array(mask) > 0]
    assert gland.mean() == pytest.approx(0.0, abs=1e-4) and gland.std() == pytest.approx(1.0, abs=1e-4)
    whole = _array(normalize.normalize(image, "zscore"))
    assert whole.mean() == pytest.approx(0.0, abs=1e-4) and whole.std() == pytest.approx(1.0, abs=1e-4)


def test_cut_tails_bounds_percentile_output(case):
    image, _ = case
    out = _array(normalize.normalize(image, "percentile", cut_tails=True))
    assert out.min() == pytest.approx(0.0, abs=1e-6) and out.max() == pytest.approx(1.0, abs=1e-6)


def test_shift_positive(case):
    image, _ = case
    negative = sitk.Cast(image, sitk.sitkFloat32) - 500.0
    stats = normalize.fit_stats([negative], method="zscore", shift_positive=True)
    assert stats.p_low >= 0 and stats.mean > 0
    # A shift does not change z-scores.
    np.testing.assert_allclose(_array(normalize.apply_stats(negative, stats)),
                               _array(normalize.normalize(image, "zscore")), atol=1e-4)


def test_patient_level_shares_statistics(pair):
    stats = normalize.fit_stats(pair, method="percentile")
    pooled = np.concatenate([_array(img).ravel() for img in pair])
    assert (stats.p_low, stats.p_high) == pytest.approx(tuple(np.percentile(pooled, [1, 99])))
    outs = [_array(normalize.apply_stats(img, stats)) for img in pair]
    assert np.percentile(np.concatenate([o.ravel() for o in outs]), 99) == pytest.approx(1.0, abs=1e-5)
    # Same statistics for both volumes: the same raw value maps to the same output.
    assert stats.n_images == 2 and stats.n_voxels == pooled.size


def test_dataset_level_json_round_trip(tmp_path, pair, case):
    stats = normalize.fit_stats(pair, method="zscore")
    path = normalize.save_stats(stats, tmp_path / "stats.json")
    assert normalize.load_stats(path) == stats
    image, _ = case
    np.testing.assert_array_equal(_array(normalize.apply_stats(image, normalize.load_stats(path))),
                                  _array(normalize.apply_stats(image, stats)))
    payload = json.loads(path.read_text())
    payload["format_version"] = 2
    (tmp_path / "v2.json").write_text(json.dumps(payload))
    with pytest.raises(InputError, match="format_version 2"):
        normalize.load_stats(tmp_path / "v2.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(InputError, match="not valid JSON"):
        normalize.load_stats(tmp_path / "bad.json")


def test_bad_inputs(case, pair):
    image, mask = case
    with pytest.raises(InputError, match="2D"):
        normalize.normalize(image[:, :, 3])
    constant = sitk.Image(16, 16, 4, sitk.sitkFloat32) + 3.0
    with pytest.raises(InputError, match="constant"):
        normalize.normalize(constant)
    nan = sitk.Cast(image, sitk.sitkFloat32)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        normalize.normalize(nan)
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    with pytest.raises(InputError, match="empty"):
        normalize.normalize(image, mask=empty)
    shifted = sitk.Image(mask)
    shifted.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="grid"):
        normalize.normalize(image, mask=shifted)
    with pytest.raises(InputError, match="method"):
        normalize.normalize(image, "minmax")
    flat = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    flat.CopyInformation(image)
    flat[80, 80, 10] = 1  # one voxel: p1 == p99
    with pytest.raises(InputError, match="constant region"):
        normalize.normalize(image, mask=flat)


# Denoising lives with the other intensity steps; small crops keep the patch-based filter fast.


def test_patch_denoise_reduces_noise_on_a_crop(case):
    image, _ = case
    crop = image[60:100, 60:100, 8:12]
    for model in ("rician", "gaussian"):
        result = denoise.patch_denoise(crop, noise_model=model, patch_radius=1, sample_patches=20)
        assert result.image.GetSize() == crop.GetSize() and result.image.GetPixelID() == sitk.sitkFloat32
        assert result.seconds > 0 and result.parameters["noise_model"] == model
        assert _roughness(result.image) < 0.9 * _roughness(crop)


def test_smoothing_is_edge_preserving_and_reports_time(case):
    image, _ = case
    result = denoise.smooth(image, "anisotropic", iterations=3)
    assert result.parameters["time_step"] == pytest.approx(1.0 / 16)  # 1 mm spacing, 3D: stable step
    assert _roughness(result.image) < 0.8 * _roughness(image)
    gauss = denoise.smooth(image, "gaussian", sigma_mm=1.0)
    assert gauss.seconds >= 0 and _roughness(gauss.image) < _roughness(image)
    with pytest.raises(InputError, match="noise model"):
        denoise.patch_denoise(image, noise_model="poissonish")


def _roughness(image) -> float:
    """Mean absolute in-plane neighbour difference: high for noise, low for smooth images."""
    a = _array(image).astype(np.float64)
    return float(np.mean(np.abs(np.diff(a, axis=2))))
