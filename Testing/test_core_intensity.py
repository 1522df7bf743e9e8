"""ProstateAICore.intensity, the one implementation of percentiles, histograms and mean/std that the CT
windows, the MR normalisation and Nyul all use: checked against numpy on real CT and MR volumes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ProstateAICore import intensity
from ProstateAICore.errors import InputError

QS = [0.0, 0.01, 0.1, 0.25, 0.5, 0.6, 0.9, 0.99, 0.998, 1.0]


@pytest.fixture(scope="module")
def promise12_t2(promise12_data):
    return sitk.ReadImage(str(promise12_data / "case00_t2.nii.gz"))


def test_integer_quantiles_are_numpy_bit_for_bit(promise12_t2, prostatex_t2):
    for image in (promise12_t2, prostatex_t2):
        array = sitk.GetArrayViewFromImage(image)
        assert intensity.is_integer_array(array)
        np.testing.assert_array_equal(intensity.quantiles(image, QS), np.quantile(array, QS))
        np.testing.assert_array_equal(intensity.percentiles(array, np.array(QS) * 100),
                                      np.percentile(array, np.array(QS) * 100))


def test_real_valued_data_exact_or_within_one_bin(prostatex_t2):
    values = sitk.GetArrayFromImage(prostatex_t2).astype(np.float32) * np.float32(0.37)
    np.testing.assert_array_equal(intensity.quantiles(values, QS, exact=True), np.quantile(values.astype(np.float64), QS))
    estimate = intensity.quantiles(values, QS)  # histogram estimate: error below one bin
    bin_width = (values.max() - values.min()) / (1 << 16)
    np.testing.assert_allclose(estimate, np.quantile(values, QS), atol=float(bin_width))


def test_counts_and_histogram(prostatex_t2):
    array = sitk.GetArrayViewFromImage(prostatex_t2)
    counts, offset = intensity.integer_counts(array)
    assert offset == array.min() and counts.sum() == array.size
    assert counts[int(np.median(array)) - offset] == np.count_nonzero(array == int(np.median(array)))
    hist, edges = intensity.histogram(array, bins=64)
    ref_hist, ref_edges = np.histogram(array, bins=64)
    np.testing.assert_array_equal(hist, ref_hist)
    np.testing.assert_allclose(edges, ref_edges)
    assert intensity.integer_counts(array.astype(np.float32)) is None


def test_mean_std_agrees_with_numpy(prostatex_t2):
    array = sitk.GetArrayViewFromImage(prostatex_t2)
    mean, std = intensity.mean_std(array)
    assert mean == pytest.approx(float(array.mean(dtype=np.float64)), rel=1e-12)
    assert std == pytest.approx(float(array.std(dtype=np.float64)), rel=1e-12)


def test_minmax_and_bad_arguments():
    np.testing.assert_array_equal(intensity.minmax_array([-10, 0, 8.5 / 255 * 100, 100, 200], 0, 100),
                                  np.array([0, 0, 8, 255, 255], np.uint8))  # half to even: 8.5 -> 8
    with pytest.raises(InputError, match="Quantiles must lie in"):
        intensity.quantiles([1, 2, 3], [50])
    with pytest.raises(InputError, match="No voxel"):
        intensity.quantiles(np.array([], np.int16), [0.5])
    with pytest.raises(InputError, match="empty: low end"):
        intensity.validate_window(5, 5)
