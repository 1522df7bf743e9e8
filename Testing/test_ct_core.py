"""CT preprocessing core on real CT data (../shared/data/ct): HU, windows, normalisation, resampling,
crop/pad, denoising, the pipeline, previews, and clear errors for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from CTPreprocessLib import croppad, denoise, normalize, resample, window
from ProstateAICore import intensity, render
from CTPreprocessLib.hu import fill_padding, load_ct, looks_like_hu, validate_ct
from CTPreprocessLib.pipeline import CTPipelineConfig, resolve_window, run_pipeline, validate_config
from ProstateAICore.errors import InputError

pytestmark = pytest.mark.data


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lung1(ct_data):
    image, info = load_ct(ct_data / "radiomics_lung1" / "lung1_image.nrrd")
    return image


@pytest.fixture(scope="module")
def lung1_label(ct_data):
    return sitk.ReadImage(str(ct_data / "radiomics_lung1" / "lung1_label.nrrd"))


@pytest.fixture(scope="module")
def abdomen_sm(ct_data):
    """3 mm CT with direction diag(-1, -1, 1) (RAS-stored NIfTI)."""
    return load_ct(ct_data / "ts_abdomen_nifti" / "example_ct_sm.nii.gz")[0]


@pytest.fixture(scope="module")
def lung1_crop(lung1):
    """A 160 x 160 x 10 block with lung, mediastinum and the lesion (fast filters), real geometry."""
    return lung1[CROP]


CROP = (slice(176, 336), slice(240, 400), slice(28, 38))  # x, y, z; the lesion is at x 206-229, y 347-372, z 32-34


def _array(image):
    return sitk.GetArrayFromImage(image)


def _same_geometry(a, b, atol=1e-6):
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=atol))


# ---------------------------------------------------------------- HU loading


def _pydicom_hu(path):
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(str(path))
    return ds, ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_hu_matches_pydicom_on_3slice_series(ct_data):
    folder = ct_data / "dcmqi_ct3slice_seg" / "ct-3slice"
    image, info = load_ct(folder)
    assert info.kind == "dicom-series" and info.modality == "CT"
    assert not info.already_hu and info.rescale_slope == 1 and info.rescale_intercept == -1024
    assert "slope 1, intercept -1024" in info.message
    # PixelPaddingValue -2000 stored -> -3024 HU, 21.3 % of voxels (README).
    assert info.padding_value_hu == -3024 and abs(info.padding_voxels / np.prod(image.GetSize()) - 0.213) < 0.002
    volume = _array(image)
    slices = {}
    for path in sorted(folder.iterdir()):
        ds, hu = _pydicom_hu(path)
        slices[float(ds.ImagePositionPatient[2])] = hu
    for k, z in enumerate(sorted(slices)):  # SimpleITK sorts slices by position (z increasing)
        assert np.isclose(image.TransformIndexToPhysicalPoint((0, 0, k))[2], z)
        np.testing.assert_array_equal(volume[k], slices[z])
    assert volume.min() == -3024 and volume.max() == 1381


def test_hu_matches_pydicom_on_single_file(ct_data):
    path = ct_data / "pydicom_ct_small" / "CT_small.dcm"
    image, info = load_ct(path, validate=False)  # a single slice: readable, but not a valid 3D CT
    _, hu = _pydicom_hu(path)
    np.testing.assert_array_equal(_array(image)[0], hu)
    assert info.kind == "dicom-file" and info.modality == "CT"
    assert info.message == "Converted stored values to HU with slope 1, intercept -1024."
    assert (hu.min(), hu.max()) == (-896, 1167)


def test_jpeg2000_series_hu_and_organ_values(ct_data):
    """Contrast CT (JPEG 2000): liver p50 93 HU, spleen p50 80 HU once the flipped mask is resampled onto the CT."""
    image, info = load_ct(ct_data / "ts_abdomen_dicom" / "dicom")
    assert "intercept -1024" in info.message and info.rescale_type == "HU"
    hu = _array(image)
    assert (hu.min(), hu.max()) == (-1024, 1839)
    seg = sitk.ReadImage(str(ct_data / "ts_abdomen_dicom" / "example_seg_dicom.nii.gz"))
    assert np.allclose(seg.GetDirection(), (1, 0, 0, 0, -1, 0, 0, 0, 1))  # y flipped vs the DICOM
    on_ct = _array(resample.resample_to_reference(seg, image, "nearest", label=True))
    assert on_ct.dtype == np.uint8
    assert abs(np.median(hu[on_ct == 5]) - 93) <= 2  # liver
    assert abs(np.median(hu[on_ct == 1]) - 80) <= 2  # spleen
    assert abs(np.median(hu[on_ct == 52]) - 151) <= 3  # aorta (contrast)


def test_nifti_and_nrrd_are_taken_as_hu(ct_data, lung1):
    image, info = load_ct(ct_data / "ts_abdomen_nifti" / "example_ct.nii.gz")
    assert info.already_hu and "no rescale tags" in info.message and info.warnings == []
    assert image.GetPixelID() == sitk.sitkInt32 and _array(image).min() == -1207
    assert sitk.GetArrayViewFromImage(lung1).max() == 3071


def test_known_tissue_hu_in_chest_ct(lung1, lung1_label):
    hu = sitk.GetArrayViewFromImage(lung1)
    # Air outside the body (slice corners) and in the trachea.
    assert abs(np.median(hu[:, :30, :30]) + 1000) < 10
    air = hu[24] < -900
    labels, n = ndimage.label(air)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    sizes = ndimage.sum_labels(air, labels, range(1, n + 1))
    candidates = [i for i in range(1, n + 1) if i not in border and 150 < sizes[i - 1] < 2000]
    centre_x = [np.nonzero(labels == i)[1].mean() for i in candidates]
    trachea = candidates[int(np.argmin(np.abs(np.array(centre_x) - hu.shape[2] / 2)))]  # midline airway
    assert abs(np.median(hu[24][labels == trachea]) + 1000) < 30

    def peak(lo, hi):  # most frequent HU in a range: the tissue's histogram peak
        counts, offset = intensity.integer_counts(hu[(hu >= lo) & (hu < hi)])
        return offset + int(np.argmax(counts))

    assert abs(peak(-200, -40) + 100) <= 25   # fat
    assert abs(peak(0, 100) - 40) <= 10       # soft tissue
    assert -900 <= peak(-950, -500) <= -800   # lung parenchyma
    lesion = hu[sitk.GetArrayViewFromImage(lung1_label) == 1]
    assert lesion.size == 837 and np.median(lesion) == -31


# ---------------------------------------------------------------- windows


def test_looks_like_hu_tells_ct_from_mr(lung1, abdomen_sm, prostatex_t2, promise12_data):
    """Real CTs in HU (chest, abdomen) have air; real T2s (ProstateX DICOM, PROMISE12) have no negative value."""
    assert looks_like_hu(sitk.GetArrayViewFromImage(lung1)) and looks_like_hu(sitk.GetArrayViewFromImage(abdomen_sm))
    promise = sitk.ReadImage(str(promise12_data / "case00_t2.nii.gz"))
    for mr in (prostatex_t2, promise):
        assert not looks_like_hu(sitk.GetArrayViewFromImage(mr))
    assert not looks_like_hu(np.zeros(0))


def test_presets_table_and_lookup():
    assert window.PRESETS["lungs"] == (-600, 1500)  # not +600 (a reference implementation's bug)
    assert window.window_from_preset("lungs") == (-1350, 150)
    assert window.window_from_preset("abdomen_soft_tissue") == (-150, 250)
    assert window.window_from_preset("liver") == (-45, 105)
    assert window.window_from_preset("spine_bone") == (-500, 1300)
    assert window.window_from_preset("stroke") == (24, 48)
    assert window.window_from_preset("temporal_bones") == (-800, 2000)
    assert set(window.PRESET_LABELS) == set(window.PRESETS)
    assert "(chest)" in window.PRESET_LABELS["lungs"]
    with pytest.raises(InputError, match="valid presets: brain, .*lungs"):
        window.window_from_preset("lung")
    assert window.window_from_level_width(40, 400) == (-160, 240)
    with pytest.raises(InputError, match="width must be positive"):
        window.window_from_level_width(40, 0)


@pytest.mark.parametrize("qs", [(0.6, 0.99), (0.01, 0.5), (0.0, 1.0), (0.123, 0.987)])
def test_percentile_window_equals_numpy_on_integer_ct(lung1, qs):
    hu = sitk.GetArrayViewFromImage(lung1)
    lo, hi = window.percentile_window(lung1, *qs)
    expected = np.quantile(hu, qs)
    assert (lo, hi) == (expected[0], expected[1])  # bit for bit: counted exactly, interpolated as numpy does


def test_percentile_window_on_float_and_int32_data(abdomen_sm, ct_data):
    resampled = resample.resample_to_spacing(abdomen_sm, (2.0, 2.0, 2.0), "bspline")  # real-valued HU
    assert resampled.GetPixelID() == sitk.sitkFloat32
    expected = np.quantile(sitk.GetArrayViewFromImage(resampled), [0.6, 0.99])
    assert np.allclose(window.percentile_window(resampled), expected, atol=0.5)
    big = load_ct(ct_data / "ts_abdomen_nifti" / "example_ct.nii.gz")[0]  # int32
    assert window.percentile_window(big, 0.01, 0.99) == tuple(np.quantile(sitk.GetArrayViewFromImage(big), [0.01, 0.99]))


def test_percentile_window_rejects_bad_quantiles(lung1):
    for qs in [(1, 99), (0.99, 0.6), (0.5, 0.5), (-0.1, 0.5)]:
        with pytest.raises(InputError, match="(?i)quantile"):
            window.percentile_window(lung1, *qs)


def test_histogram_matches_numpy(lung1, abdomen_sm):
    hu = sitk.GetArrayViewFromImage(lung1)
    counts, edges = intensity.histogram(lung1, bins=256)
    ref_counts, ref_edges = np.histogram(hu, bins=256)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(edges, ref_edges)
    counts, edges = intensity.histogram(hu, bins=100, value_range=(-1350, 150))
    np.testing.assert_array_equal(counts, np.histogram(hu, bins=100, range=(-1350, 150))[0])


def test_apply_window_clips_to_float32(lung1_crop):
    out = window.apply_window(lung1_crop, -1350, 150)
    assert out.GetPixelID() == sitk.sitkFloat32 and _same_geometry(out, lung1_crop)
    expected = np.clip(_array(lung1_crop), -1350, 150)
    np.testing.assert_array_equal(_array(out), expected.astype(np.float32))
    with pytest.raises(InputError, match="empty"):
        window.apply_window(lung1_crop, 100, 100)


# ---------------------------------------------------------------- normalisation


def test_minmax_uint8_lungs_formula_exact(lung1):
    lo, hi = window.window_from_preset("lungs")
    out = normalize.minmax(lung1, lo, hi, "uint8")
    hu = _array(lung1).astype(np.float64)
    expected = np.clip(np.rint((hu - lo) / (hi - lo) * 255), 0, 255)
    assert out.GetPixelID() == sitk.sitkUInt8 and _same_geometry(out, lung1)
    np.testing.assert_array_equal(_array(out), expected)
    assert _array(out).min() == 55 and _array(out).max() == 255  # air -1024 -> 55.4; 3071 clipped


def test_minmax_rounds_half_to_even_and_types(lung1_crop):
    half = sitk.GetImageFromArray(np.array([[[0, 1, 3, 5, 510]] * 2] * 2, dtype=np.int16))
    np.testing.assert_array_equal(_array(normalize.minmax(half, 0, 510, "uint8"))[0, 0], [0, 0, 2, 2, 255])
    u16 = normalize.minmax(lung1_crop, dtype="uint16")  # own min/max
    assert u16.GetPixelID() == sitk.sitkUInt16 and (_array(u16).min(), _array(u16).max()) == (0, 65535)
    f32 = normalize.minmax(lung1_crop, -1024, 600, "float32")
    values = _array(f32)
    assert f32.GetPixelID() == sitk.sitkFloat32 and values.min() == 0.0 and values.max() == 1.0
    assert _same_geometry(u16, lung1_crop) and _same_geometry(f32, lung1_crop)
    with pytest.raises(InputError, match="output type"):
        normalize.minmax(lung1_crop, dtype="int8")


def test_zscore_whole_image_and_mask(lung1, lung1_label):
    z = normalize.zscore(lung1)
    values = _array(z).astype(np.float64)
    assert z.GetPixelID() == sitk.sitkFloat32 and _same_geometry(z, lung1)
    assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-4
    zm = _array(normalize.zscore(lung1, lung1_label)).astype(np.float64)
    inside = _array(lung1_label) == 1
    assert abs(zm[inside].mean()) < 1e-4 and abs(zm[inside].std() - 1) < 1e-4
    empty = sitk.Image(lung1_label.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(lung1_label)
    with pytest.raises(InputError, match="mask is empty"):
        normalize.zscore(lung1, empty)
    with pytest.raises(InputError, match="not on the image's grid"):
        normalize.zscore(lung1, lung1_label[:, :, :10])


# ---------------------------------------------------------------- denoising


def test_denoise_filters_keep_geometry_and_reduce_noise(lung1_crop):
    # Noise = spread of neighbour differences inside homogeneous soft tissue (eroded, so no edges).
    soft = ndimage.binary_erosion((_array(lung1_crop) > -20) & (_array(lung1_crop) < 100), np.ones((3, 5, 5)))
    pairs = soft[:, :, 1:] & soft[:, :, :-1]

    def noise(image):
        return np.diff(_array(image).astype(np.float64), axis=2)[pairs].std() / np.sqrt(2)

    noise_before = noise(lung1_crop)
    assert pairs.sum() > 2000
    outputs = {
        "curvature_flow": denoise.curvature_flow(lung1_crop, 3, 0.0625),
        "anisotropic": denoise.anisotropic_diffusion(lung1_crop, 3, 0.0625, 3.0),
        "anisotropic_curvature": denoise.anisotropic_diffusion(lung1_crop, 2, 0.03, 3.0, kind="curvature"),
        "median": denoise.median(lung1_crop, 1),
        "gaussian": denoise.gaussian(lung1_crop, 1.0),
    }
    for name, out in outputs.items():
        assert _same_geometry(out, lung1_crop), name
        expected_type = lung1_crop.GetPixelID() if name == "median" else sitk.sitkFloat32
        assert out.GetPixelID() == expected_type, name
        assert noise(out) < 0.9 * noise_before, name
    config = CTPipelineConfig(denoise="median", median_radius=1)
    np.testing.assert_array_equal(_array(denoise.denoise(lung1_crop, config)), _array(outputs["median"]))
    assert denoise.stable_time_step(lung1_crop, 0.0625) == pytest.approx(0.5703125 / 16)
    with pytest.raises(InputError, match="iterations"):
        denoise.curvature_flow(lung1_crop, 0, 0.05)


# ---------------------------------------------------------------- resampling


def test_resample_round_trip_on_nested_grid(abdomen_sm):
    """3 mm -> 1.5 mm -> 3 mm: the original samples are on the fine grid, so B-spline must give them back."""
    fine = resample.resample_to_spacing(abdomen_sm, (1.5, 1.5, 1.5))
    assert fine.GetSize() == tuple(2 * n for n in abdomen_sm.GetSize())
    assert fine.GetOrigin() == abdomen_sm.GetOrigin() and fine.GetDirection() == abdomen_sm.GetDirection()
    assert fine.GetPixelID() == sitk.sitkFloat32
    back = resample.resample_to_reference(fine, abdomen_sm, "bspline")
    assert _same_geometry(back, abdomen_sm, atol=0)
    error = np.abs(_array(back) - _array(abdomen_sm))[1:-1, 1:-1, 1:-1]
    assert error.max() < 1e-2


def test_resample_round_trip_anisotropic_chest(lung1_crop):
    coarse = resample.resample_to_spacing(lung1_crop, (1.5, 1.5, 1.5), "linear")
    # Extent covered: ceil(160 * 0.5703 / 1.5) = 61, ceil(10 * 5 / 1.5) = 34.
    assert coarse.GetSize() == (61, 61, 34)
    back = resample.resample_to_reference(coarse, lung1_crop, "bspline")
    assert _same_geometry(back, lung1_crop)
    error = np.abs(_array(back) - _array(lung1_crop))[1:-1, 4:-4, 4:-4]
    assert np.median(error) < 25  # HU, after losing in-plane detail (0.57 -> 1.5 mm)


def test_resample_types_default_value_and_labels(lung1_crop, lung1_label):
    shifted = sitk.Image(lung1_crop)
    shifted.SetOrigin(np.array(lung1_crop.GetOrigin()) + 20.0)  # half of the reference lies outside
    out = resample.resample_to_reference(shifted, lung1_crop, "linear")
    assert _array(out)[0, 0, 0] == _array(lung1_crop).min()  # outside = image minimum (air), not 0 HU
    nearest = resample.resample_to_spacing(lung1_crop, (1.0, 1.0, 1.0), "nearest")
    assert nearest.GetPixelID() == lung1_crop.GetPixelID()
    lesion = lung1_label[190:250, 330:390, 30:37]
    for name in ("nearest", "label_gaussian"):
        out = resample.resample_to_spacing(lesion, (1.0, 1.0, 1.0), name, label=True)
        assert out.GetPixelID() == lesion.GetPixelID() and set(np.unique(_array(out))) == {0, 1}
        volume = np.count_nonzero(_array(out)) * 1.0
        assert abs(volume - 837 * 0.5703125 ** 2 * 5) / volume < 0.15  # about 1.36 cm^3
    with pytest.raises(InputError, match="label maps"):
        resample.resample_to_spacing(lesion, (1, 1, 1), "bspline", label=True)
    with pytest.raises(InputError, match="positive"):
        resample.resample_to_spacing(lung1_crop, (1, 0, 1))


# ---------------------------------------------------------------- crop / pad


def test_crop_pad_keeps_physical_positions(abdomen_sm):
    size = (90, 130, 20)  # crop x and z, pad y
    out = croppad.crop_or_pad(abdomen_sm, size, pad_value=-1024)
    assert out.GetSize() == size and out.GetDirection() == abdomen_sm.GetDirection()
    source, result = sitk.GetArrayViewFromImage(abdomen_sm), sitk.GetArrayViewFromImage(out)
    rng = np.random.default_rng(1)
    checked = padded = 0
    for index in rng.integers(0, size, size=(500, 3)):
        point = out.TransformIndexToPhysicalPoint([int(i) for i in index])
        original = np.array(abdomen_sm.TransformPhysicalPointToContinuousIndex(point))
        assert np.allclose(original, np.round(original), atol=1e-6)  # voxel centres stay voxel centres
        i, j, k = (int(round(v)) for v in original)
        if all(0 <= v < n for v, n in zip((i, j, k), abdomen_sm.GetSize())):
            assert result[index[2], index[1], index[0]] == source[k, j, i]
            checked += 1
        else:
            assert result[index[2], index[1], index[0]] == -1024
            padded += 1
    assert checked > 100 and padded > 10


def test_crop_centred_on_mask(lung1, lung1_label):
    out = croppad.crop_or_pad(lung1, (64, 64, 8), -1024, center="mask", mask=lung1_label)
    lesion_voxels = np.argwhere(_array(lung1_label) == 1)
    centre = lung1.TransformContinuousIndexToPhysicalPoint(((lesion_voxels.min(0) + lesion_voxels.max(0)) / 2)[::-1].tolist())
    middle = out.TransformContinuousIndexToPhysicalPoint([31.5, 31.5, 3.5])
    assert np.allclose(centre, middle, atol=np.array(lung1.GetSpacing()) / 2 + 1e-6)
    with pytest.raises(InputError, match="needs a mask"):
        croppad.crop_or_pad(lung1, (64, 64, 8), -1024, center="mask")
    with pytest.raises(InputError, match="does not fit"):
        croppad.crop_or_pad(normalize.minmax(lung1[:40, :40, :4], dtype="uint8"), (50, 50, 4), -1024)


def test_reduce_slices(abdomen_sm):
    out, indices = croppad.reduce_slices(abdomen_sm, 10, "even")
    assert list(indices) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert out.GetSize() == (122, 101, 10) and out.GetSpacing()[2] == pytest.approx(3.0 * 29 / 9)
    np.testing.assert_array_equal(_array(out), _array(abdomen_sm)[indices])
    assert np.allclose(out.GetOrigin(), abdomen_sm.TransformIndexToPhysicalPoint((0, 0, 0)))
    random_out, random_indices = croppad.reduce_slices(abdomen_sm, 7, "random", seed=3)
    assert list(random_indices) == sorted(set(random_indices)) and len(random_indices) == 7
    assert list(croppad.reduce_slices(abdomen_sm, 7, "random", seed=3)[1]) == list(random_indices)
    last = abdomen_sm.TransformIndexToPhysicalPoint((0, 0, int(random_indices[-1])))
    assert np.allclose(random_out.TransformIndexToPhysicalPoint((0, 0, 6)), last)
    with pytest.raises(InputError, match="between 2 and 30"):
        croppad.reduce_slices(abdomen_sm, 31)


# ---------------------------------------------------------------- pipeline


def test_pipeline_leaves_input_unchanged_and_reports(lung1_crop, lung1_label):
    before = _array(lung1_crop).copy()
    geometry_before = (lung1_crop.GetOrigin(), lung1_crop.GetSpacing(), lung1_crop.GetDirection())
    mask = lung1_label[CROP]
    seen = []
    config = CTPipelineConfig(denoise="gaussian", spacing=(1.0, 1.0, 2.5), interpolator="linear",
                              window_mode="percentile", normalize="zscore", zscore_mask=None,
                              size=(96, 96, 24), crop_center="mask", crop_mask=mask)
    out, report = run_pipeline(lung1_crop, config, progress=lambda f, m: seen.append(f))
    np.testing.assert_array_equal(_array(lung1_crop), before)
    assert (lung1_crop.GetOrigin(), lung1_crop.GetSpacing(), lung1_crop.GetDirection()) == geometry_before
    assert [s["name"] for s in report["steps"]] == ["validate", "denoise", "resample", "window", "normalize", "crop_pad"]
    assert all(s["seconds"] >= 0 for s in report["steps"]) and report["total_seconds"] > 0
    assert report["geometry"]["size"] == [96, 96, 24] and report["geometry"]["spacing"] == [1.0, 1.0, 2.5]
    assert report["dtype"] == "float32" and out.GetPixelID() == sitk.sitkFloat32
    assert seen == sorted(seen) and seen[-1] == 1.0
    json.dumps(report)  # serialisable for --report


def test_pipeline_uint8_lungs_matches_formula_and_pads_with_window_low(lung1_crop):
    config = CTPipelineConfig(window_mode="preset", preset="lungs", dtype="uint8", size=(170, 150, 12))
    out, report = run_pipeline(lung1_crop, config)
    assert report["window"] == [-1350.0, 150.0] and report["normalize"] == "minmax"  # implied by uint8
    assert out.GetPixelID() == sitk.sitkUInt8
    hu = _array(lung1_crop).astype(np.float64)
    expected = np.clip(np.rint((hu + 1350) / 1500 * 255), 0, 255)
    result = _array(out)
    np.testing.assert_array_equal(result[1:11, :, 5:165], expected[:, 5:155, :])  # crop y, pad x and z
    assert (result[0] == 0).all() and (result[:, :, :5] == 0).all()  # padding = window low end -> 0


def test_pipeline_output_grid_follows_input_or_request(abdomen_sm, lung1_crop):
    out, report = run_pipeline(abdomen_sm, CTPipelineConfig(window_mode="clip", normalize="minmax", dtype="uint16"))
    assert _same_geometry(out, abdomen_sm) and out.GetPixelID() == sitk.sitkUInt16
    assert report["window"] == [-1350.0, 2000.0]
    out, _ = run_pipeline(lung1_crop, CTPipelineConfig(reference=abdomen_sm, interpolator="linear"))
    assert _same_geometry(out, abdomen_sm)
    out, _ = run_pipeline(abdomen_sm, CTPipelineConfig(window_mode="custom", level=40, width=400))
    assert _same_geometry(out, abdomen_sm) and (_array(out).min(), _array(out).max()) == (-160, 240)


def test_resolve_window_modes(lung1):
    assert resolve_window(lung1, CTPipelineConfig()) is None
    assert resolve_window(lung1, CTPipelineConfig(window_mode="preset", preset="liver")) == (-45, 105)
    assert resolve_window(lung1, CTPipelineConfig(window_mode="custom", level=-600, width=1500)) == (-1350, 150)
    assert resolve_window(lung1, CTPipelineConfig(window_mode="clip")) == (-1350, 2000)
    lo, hi = resolve_window(lung1, CTPipelineConfig(window_mode="percentile", quantiles=(0.01, 0.99)))
    assert (lo, hi) == (-1013, 406)  # README: p1 / p99


@pytest.mark.parametrize("changes, message", [
    ({"denoise": "bilateral"}, "denoising method"),
    ({"window_mode": "auto"}, "window mode"),
    ({"window_mode": "preset", "preset": "lung"}, "valid presets"),
    ({"window_mode": "preset"}, "needs a preset"),
    ({"window_mode": "custom", "level": 40}, "level"),
    ({"window_mode": "clip", "clip": (100, -100)}, "empty"),
    ({"window_mode": "percentile", "quantiles": (1, 99)}, "(?i)quantile"),
    ({"normalize": "robust"}, "normalisation"),
    ({"dtype": "int16"}, "output type"),
    ({"normalize": "zscore", "dtype": "uint8"}, "float32"),
    ({"interpolator": "cubic"}, "interpolator"),
    ({"spacing": (1, -1, 1)}, "positive"),
    ({"size": (10, 10)}, "Size"),
    ({"size": (10, 10, 10), "crop_center": "mask"}, "needs a crop mask"),
])
def test_pipeline_config_errors(changes, message):
    with pytest.raises(InputError, match=message):
        validate_config(CTPipelineConfig(**changes))


# ---------------------------------------------------------------- bad input


def _write(array, path, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def test_bad_inputs_give_clear_errors(ct_data, prostatex_data, tmp_path):
    ramp = np.linspace(-1000, 1000, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    nan = ramp.copy()
    nan[1, 2, 3] = np.nan
    inf = ramp.copy()
    inf[0, 0, 0] = np.inf
    cases = {
        ct_data / "pydicom_ct_small" / "CT_small.dcm": "2D",
        _write(nan, tmp_path / "nan.nrrd"): "NaN or infinite",
        _write(inf, tmp_path / "inf.nrrd"): "NaN or infinite",
        _write(np.full((4, 5, 6), -1000, np.int16), tmp_path / "constant.nrrd"): "constant",
        tmp_path / "missing.nii.gz": "does not exist",
        ct_data / "radiomics_lung1" / "lung1_label.nrrd": "label map",
        ct_data / "ts_abdomen_nifti" / "example_seg.nii.gz": "label map",
        prostatex_data / "ProstateX-0000" / "t2w": "DICOM MR image, not CT",
        ct_data / "dcmqi_ct3slice_seg" / "liver.dcm": "DICOM SEG image, not CT",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message):
            load_ct(path)


def test_padding_filled_with_lowest_real_hu(ct_data):
    image, info = load_ct(ct_data / "dcmqi_ct3slice_seg" / "ct-3slice")
    before = _array(image).copy()
    config = CTPipelineConfig(padding_value=info.padding_value_hu, window_mode="percentile", quantiles=(0.1, 0.5))
    out, report = run_pipeline(image, config)
    np.testing.assert_array_equal(_array(image), before)  # input untouched
    step = report["steps"][1]
    assert step["name"] == "padding" and step["voxels"] == info.padding_voxels and step["filled_with"] == -1024
    # p10 falls in the 21 % padding: -3024 HU before filling, air (-1024) after; the median is unchanged.
    assert report["window"] == [-1024, -807]
    filled, count, fill = fill_padding(image, -3024)
    assert count == 167316 and fill == -1024 and _array(filled).min() == -1024
    assert np.array_equal(_array(filled)[before != -3024], before[before != -3024])


def test_corrupt_dicom_file_and_series(ct_data, tmp_path):
    original = ct_data / "dcmqi_ct3slice_seg" / "ct-3slice"
    data = (original / "02.dcm").read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="Could not read"):
        load_ct(tmp_path / "truncated.dcm")
    series = tmp_path / "series"
    series.mkdir()
    for name in ("01.dcm", "03.dcm"):
        shutil.copy(original / name, series / name)
    (series / "02.dcm").write_bytes(data[: int(len(data) * 0.9)])  # GDCM would silently drop it
    with pytest.raises(InputError, match="could not be read as part of any series.*02.dcm"):
        load_ct(series)


def test_validate_ct_on_images(lung1_crop):
    validate_ct(lung1_crop)
    labels = sitk.Cast(lung1_crop > 0, sitk.sitkUInt8)
    with pytest.raises(InputError, match="label map"):
        validate_ct(labels)
    with pytest.raises(InputError, match="2D"):
        validate_ct(lung1_crop[:, :, 0])


# ---------------------------------------------------------------- previews


def _marker_volume(direction):
    """Bright voxel block at the patient's right-anterior-superior corner, dark elsewhere."""
    image = sitk.Image((20, 16, 12), sitk.sitkInt16) - 1000
    image.SetDirection(direction)
    image.SetSpacing((1.0, 1.5, 2.0))
    image.SetOrigin(-np.array(image.TransformContinuousIndexToPhysicalPoint((9.5, 7.5, 5.5))))  # centre at 0
    for i in range(20):
        for j in range(16):
            for k in range(12):
                p = np.array(image.TransformIndexToPhysicalPoint((i, j, k)))
                if p[0] < -5 and p[1] < -5 and p[2] > 5:  # LPS: right = -x, anterior = -y, superior = +z
                    image[i, j, k] = 1000
    return image


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (1, 0, 0, 0, 0, 1, 0, -1, 0)])
def test_slices_in_radiological_orientation(direction, tmp_path):
    image = _marker_volume(direction)
    axial, aspect, index = render.display_slice(image, "axial", render.to_lps(image).GetSize()[2] - 1)
    assert aspect == pytest.approx(render.lps_spacing(image)[1] / render.lps_spacing(image)[0])
    assert axial[0, 0] == 1000 and axial[-1, -1] == -1000      # patient right on the left, anterior up
    coronal, _, _ = render.display_slice(image, "coronal", 0)
    assert coronal[0, 0] == 1000 and coronal[-1, -1] == -1000  # right on the left, superior up
    sagittal, _, _ = render.display_slice(image, "sagittal", 0)
    assert sagittal[0, 0] == 1000 and sagittal[-1, -1] == -1000  # anterior on the left, superior up
    png = tmp_path / "axial.png"
    render.save_slice_png(image, png, -1000, 1000, "axial", index, title="marker", width_px=200)
    import matplotlib.image
    picture = matplotlib.image.imread(str(png))[..., :3].mean(axis=2)
    assert picture.shape == (28 + round(200 * axial.shape[0] * aspect / axial.shape[1]), 200)
    body = picture[28:]  # below the title band
    assert body[5:30, 5:30].mean() > 0.8 and body[-30:-5, -30:-5].mean() < 0.2


def test_histogram_png(lung1_crop, tmp_path):
    path = render.save_histogram_png(lung1_crop, tmp_path / "hist.png", window=(-1350, 150))
    import matplotlib.image
    assert matplotlib.image.imread(path).shape[:2] == (320, 700)


def test_demo_runs_on_small_ct(ct_data, tmp_path):
    from CTPreprocessLib import demo

    summary = demo.run(tmp_path, sample=ct_data / "ts_abdomen_nifti" / "example_ct_sm.nii.gz", resample_spacing=2.0)
    names = [o["name"] for o in summary["outputs"]]
    assert names == ["lungs", "abdomen_soft_tissue", "liver", "spine_bone", "percentile_zscore", "resampled_2mm"]
    for output in summary["outputs"]:
        image = sitk.ReadImage(str(tmp_path / output["volume"]))
        assert list(image.GetSize()) == output["size"]
        assert all((tmp_path / png).stat().st_size > 1000 for png in output["pngs"])
    lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct_lungs.nii.gz")))
    assert lungs.dtype == np.uint8 and lungs.max() == 255
    assert json.loads((tmp_path / "ct_demo_summary.json").read_text())["landmarks"]["lungs"] >= 20  # lung bases at the top
