"""Nyul standardisation against the reference (intensity-normalization's NyulNormalizer) on real PROMISE12 T2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from MRStandardizeLib import nyul
from ProstateAICore.errors import InputError

# Five sites / sizes / intensity ranges: max 391 (256x256), 1462, 1723 (128x128), 416 (192x192), 4095 (coil).
CASES = ["case01", "case13", "case25", "case34", "case38"]


@pytest.fixture(scope="module")
def cohort(promise12_data):
    images = [sitk.ReadImage(str(promise12_data / f"{c}_t2.nii.gz")) for c in CASES]
    masks = [sitk.ReadImage(str(promise12_data / f"{c}_prostate.nii.gz")) for c in CASES]
    return images, masks


@pytest.fixture(scope="module")
def fitted(cohort):
    images, _ = cohort
    model = nyul.fit(images)
    return model, [nyul.apply(img, model) for img in images]


@pytest.fixture(scope="module")
def reference(cohort):
    inorm = pytest.importorskip("intensity_normalization")
    from intensity_normalization.adapters.images import NumpyImageAdapter

    images, _ = cohort
    adapted = [NumpyImageAdapter(sitk.GetArrayFromImage(img)) for img in images]
    normalizer = inorm.NyulNormalizer()  # package defaults: range 1-100, percentiles 1, 10..90, 99, foreground > 0
    normalizer.fit_population(adapted)
    return normalizer, [normalizer.transform(a).get_data() for a in adapted]


def test_standard_landmarks_match_reference(fitted, reference):
    model, _ = fitted
    normalizer, _ = reference
    ours, theirs = np.asarray(model.standard_landmarks), np.asarray(normalizer.standard_scale)
    assert ours.shape == (11,)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=0)
    assert ours[0] == pytest.approx(1.0) and ours[-1] == pytest.approx(100.0)


def test_applied_images_match_reference(cohort, fitted, reference):
    images, _ = cohort
    _, ours = fitted
    _, theirs = reference
    for image, out, ref in zip(images, ours, theirs):
        arr = sitk.GetArrayViewFromImage(out)
        assert out.GetPixelID() == sitk.sitkFloat32
        assert out.GetSize() == image.GetSize() and out.GetSpacing() == image.GetSpacing()
        # <= 1e-5 relative to the output scale (background voxels map near 0, so relative-per-voxel is meaningless there)
        assert np.max(np.abs(arr - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_mapping_is_monotonic(cohort, fitted):
    images, _ = cohort
    _, outs = fitted
    for image, out in zip(images, outs):
        raw = sitk.GetArrayViewFromImage(image).ravel()
        order = np.argsort(raw, kind="stable")
        assert np.all(np.diff(sitk.GetArrayViewFromImage(out).ravel()[order]) >= 0)


def _relative_spread(per_image_values: np.ndarray) -> float:
    """Mean over columns of (std across images / |mean across images|)."""
    return float(np.mean(per_image_values.std(axis=0) / np.abs(per_image_values.mean(axis=0))))


def test_standardisation_collapses_landmark_spread(cohort, fitted):
    """The foreground landmarks of the five sites differ by 59 % raw and coincide after Nyul."""
    images, _ = cohort
    model, outs = fitted
    percs = model.config.percentiles

    def foreground_landmarks(volumes):
        return np.array([np.percentile(sitk.GetArrayViewFromImage(v)[sitk.GetArrayViewFromImage(raw) > 0], percs)
                         for raw, v in zip(images, volumes)])

    before, after = _relative_spread(foreground_landmarks(images)), _relative_spread(foreground_landmarks(outs))
    assert before > 0.5  # measured 0.59
    assert after < 1e-4 * before  # measured 0 (landmarks land on the standard scale)
    np.testing.assert_allclose(foreground_landmarks(outs).mean(axis=0), model.standard_landmarks, rtol=1e-4)


def test_standardisation_aligns_prostate_tissue(cohort, fitted):
    """An independent check: gland quartiles (masks unused by the fit) agree better across sites."""
    images, masks = cohort
    _, outs = fitted

    def gland_quartiles(volumes):
        return np.array([np.percentile(sitk.GetArrayViewFromImage(v)[sitk.GetArrayViewFromImage(m) > 0], [25, 50, 75])
                         for v, m in zip(volumes, masks)])

    before, after = _relative_spread(gland_quartiles(images)), _relative_spread(gland_quartiles(outs))
    # Measured: raw 0.53, standardised 0.30 (ratio 0.56); the foreground (> 0) includes the air and
    # fat around the body, so the gland is not forced onto one value.
    assert before > 0.45
    assert after < 0.65 * before


def test_fit_with_masks_uses_mask_voxels(cohort):
    images, masks = cohort
    model = nyul.fit(images[:2], masks[:2])
    # With the prostate masks the landmarks are those of the gland only.
    gland = sitk.GetArrayViewFromImage(images[0])[sitk.GetArrayViewFromImage(masks[0]) > 0]
    assert np.allclose(nyul.landmarks(images[0], masks[0])[[0, 5, 10]], np.percentile(gland, [1, 50, 99]))
    assert model.n_images == 2


def test_json_round_trip(tmp_path, fitted, cohort):
    model, outs = fitted
    path = nyul.save_model(model, tmp_path / "model.json")
    loaded = nyul.load_model(path)
    assert loaded == model
    again = nyul.apply(cohort[0][1], loaded)
    assert np.array_equal(sitk.GetArrayViewFromImage(again), sitk.GetArrayViewFromImage(outs[1]))
    assert not list(tmp_path.glob(".*"))  # atomic write left no temporary file


def test_wrong_version_and_malformed_json_are_clear_errors(tmp_path, fitted):
    model, _ = fitted
    payload = json.loads(model.to_json())
    payload["format_version"] = 99
    (tmp_path / "v99.json").write_text(json.dumps(payload))
    with pytest.raises(InputError, match="format_version 99"):
        nyul.load_model(tmp_path / "v99.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        nyul.load_model(tmp_path / "broken.json")
    payload["format_version"] = 1
    payload["standard_landmarks"] = payload["standard_landmarks"][:5]
    (tmp_path / "short.json").write_text(json.dumps(payload))
    with pytest.raises(InputError, match="5 standard landmarks"):
        nyul.load_model(tmp_path / "short.json")
    (tmp_path / "pickle.json").write_bytes(b"\x80\x04\x95")
    with pytest.raises(InputError):
        nyul.load_model(tmp_path / "pickle.json")


def test_cut_tails_clamps_to_standard_range(cohort):
    images, _ = cohort
    model = nyul.fit(images[:3], config=nyul.NyulConfig(cut_tails=True))
    out = sitk.GetArrayFromImage(nyul.apply(images[3], model))  # a copy: the image is a temporary
    assert out.min() >= 1.0 and out.max() <= 100.0


def test_bad_inputs(cohort, fitted):
    images, masks = cohort
    model, _ = fitted
    with pytest.raises(InputError, match="2D"):
        nyul.apply(images[1][:, :, 5], model)
    with pytest.raises(InputError, match="constant"):
        nyul.fit([sitk.Image(20, 20, 5, sitk.sitkInt16) + 7])
    empty = sitk.Image(images[1].GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(images[1])
    with pytest.raises(InputError, match="empty"):
        nyul.apply(images[1], model, empty)
    with pytest.raises(InputError, match="grid"):
        nyul.apply(images[1], model, masks[0])  # 160x160x15 image, 256x256x29 mask
    nan_image = sitk.Cast(images[1], sitk.sitkFloat32)
    nan_image[10, 10, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        nyul.landmarks(nan_image)
    with pytest.raises(InputError, match="one mask per image"):
        nyul.fit(images[:2], masks[:1])


def test_histogram_png(tmp_path, cohort, fitted):
    images, _ = cohort
    model, outs = fitted
    path = nyul.save_histograms_png(images, outs, tmp_path / "hist.png", model.standard_landmarks, labels=CASES)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_float_images_match_reference(cohort):
    """N4 output is float32: the non-histogram path agrees with the reference too."""
    inorm = pytest.importorskip("intensity_normalization")
    from intensity_normalization.adapters.images import NumpyImageAdapter

    images, _ = cohort
    floats = [sitk.Cast(img, sitk.sitkFloat32) * 1.37 + 0.25 for img in images[1:4]]
    model = nyul.fit(floats)
    adapted = [NumpyImageAdapter(sitk.GetArrayFromImage(img)) for img in floats]
    reference = inorm.NyulNormalizer().fit_population(adapted)
    np.testing.assert_allclose(model.standard_landmarks, reference.standard_scale, rtol=1e-5)
    ours = sitk.GetArrayFromImage(nyul.apply(floats[0], model))
    theirs = reference.transform(adapted[0]).get_data()
    assert np.max(np.abs(ours - theirs)) <= 1e-5 * np.max(np.abs(theirs))


def test_shift_positive_moves_negative_images_to_zero(cohort):
    images, _ = cohort
    negative = images[1] - 300  # int16 with values down to -300
    config = nyul.NyulConfig(shift_positive=True)
    np.testing.assert_array_equal(nyul.landmarks(negative, config=config), nyul.landmarks(images[1]))
    with pytest.raises(InputError, match="no foreground voxel|no voxel > 0"):
        nyul.landmarks(sitk.Cast(images[1], sitk.sitkFloat32) * -1.0)
