"""`register` never makes the alignment worse silently (MRStandardizeLib.registration, `prostateai register`).

A registration whose gradient correlation ends below the scanner alignment's (identity) gets a
warning and, by default, returns the scanner alignment itself (`keep_initial_if_worse`).

The bad case is made on purpose and deterministically (seeded, single-threaded): ADC -> T2 with
the metric restricted to a box in the T2's corner, far from the gland (air and noise, nothing
that lines up), while the gradient correlation is measured in the gland: 0.631 -> 0.204 (measured).
Budget: each registration here takes ~1-2 s on 2 cores (30 iterations), the BSpline one ~6 s.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MRStandardizeLib import registration as reg
from ProstateAICore.geometry import require_same_grid, same_grid
from ProstateAICore.imageio import read_image

pytestmark = pytest.mark.data

ITERATIONS = 30
WARNING_PREFIX = "prostateai register: warning: "


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def adc(prostatex_case):
    return read_image(prostatex_case / "adc")


@pytest.fixture(scope="module")
def gland(prostatex_case, prostatex_t2):
    # The NIfTI mask differs from the DICOM T2 geometry by ~1e-6 mm: adopt the T2's exact geometry.
    return require_same_grid(prostatex_t2, sitk.ReadImage(str(prostatex_case / "masks" / "prostate.nii.gz")))


@pytest.fixture(scope="module")
def far_box(prostatex_t2):
    """A metric region far from the gland: a 50 x 50 mm box in the T2's corner, all slices."""
    values = np.zeros(sitk.GetArrayViewFromImage(prostatex_t2).shape, np.uint8)
    values[:, 20:120, 20:120] = 1
    box = sitk.GetImageFromArray(values)
    box.CopyInformation(prostatex_t2)
    return box


@pytest.fixture(scope="module")
def identity_resampled(prostatex_t2, adc):
    """The ADC on the T2 grid in scanner coordinates (what "keep the initial alignment" must give)."""
    return sitk.Resample(adc, prostatex_t2, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


@pytest.fixture(scope="module")
def worse_kept(prostatex_t2, adc, gland, far_box):
    return reg.register(prostatex_t2, adc, fixed_mask=far_box, selection_mask=gland, iterations=ITERATIONS)


@pytest.fixture(scope="module")
def worse_as_is(prostatex_t2, adc, gland, far_box):
    return reg.register(prostatex_t2, adc, fixed_mask=far_box, selection_mask=gland, iterations=ITERATIONS,
                        keep_initial_if_worse=False)


@pytest.fixture(scope="module")
def improved(prostatex_t2, adc, gland):
    return reg.register(prostatex_t2, adc, selection_mask=gland, iterations=ITERATIONS)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


# --------------------------------------------------------------------------------------------
# The bad case really is worse


def test_bad_metric_region_lowers_the_gradient_correlation(worse_as_is, prostatex_t2, adc, gland):
    before = reg.gradient_correlation(prostatex_t2, reg.resample_onto(prostatex_t2, adc), gland)
    after = reg.gradient_correlation(prostatex_t2, worse_as_is.resampled, gland)
    assert before == pytest.approx(worse_as_is.gradient_correlation_before)
    assert after == pytest.approx(worse_as_is.gradient_correlation_after)
    assert after < before - 0.1  # measured 0.631 -> 0.204: clearly worse, not float noise
    # Kept as asked: the registered transform and its resampling, with a warning.
    assert worse_as_is.kept_initial is False
    assert worse_as_is.gradient_correlation_registered == worse_as_is.gradient_correlation_after
    assert worse_as_is.warning == (
        f"registration lowered the gradient correlation from {before:.3f} to {after:.3f}; "
        "result kept as asked (--no-keep-initial-if-worse)"
    )
    assert not np.allclose(worse_as_is.transform.GetParameters(), 0.0)
    again = sitk.Resample(adc, prostatex_t2, worse_as_is.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert np.array_equal(_array(again), _array(worse_as_is.resampled))


# --------------------------------------------------------------------------------------------
# Default: keep the scanner alignment


def test_default_keeps_the_scanner_alignment(worse_kept, worse_as_is, identity_resampled, prostatex_t2, adc):
    assert worse_kept.kept_initial is True
    transform = worse_kept.transform
    assert isinstance(transform, sitk.Euler3DTransform)  # same type as a rigid result
    assert transform.GetParameters() == (0.0,) * 6
    assert transform.GetCenter() == worse_as_is.transform.GetCenter()
    assert same_grid(worse_kept.resampled, prostatex_t2, tolerance=1e-9)
    assert worse_kept.resampled.GetPixelID() == sitk.sitkFloat32
    assert np.allclose(_array(worse_kept.resampled), _array(identity_resampled), atol=1e-4)
    # `resampled` is the moving image resampled with `transform`, as always.
    again = sitk.Resample(adc, prostatex_t2, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert np.array_equal(_array(again), _array(worse_kept.resampled))
    # The numbers describe what is returned; the registration's own value is still there.
    assert worse_kept.gradient_correlation_after == worse_kept.gradient_correlation_before
    assert worse_kept.metric_after == worse_kept.metric_before
    assert worse_kept.gradient_correlation_registered == pytest.approx(worse_as_is.gradient_correlation_after)
    before, found = worse_kept.gradient_correlation_before, worse_kept.gradient_correlation_registered
    assert worse_kept.warning == (
        f"registration lowered the gradient correlation from {before:.3f} to {found:.3f}; kept the scanner alignment"
    )


def test_report_json_has_the_fields(worse_kept, worse_as_is, improved):
    for result, kept in ((worse_kept, True), (worse_as_is, False)):
        summary = json.loads(json.dumps(result.to_dict()))
        assert summary["kept_initial"] is kept
        assert summary["warning"] == result.warning and summary["warning"].startswith("registration lowered")
        assert summary["gradient_correlation_registered"] == pytest.approx(result.gradient_correlation_registered)
        assert summary["settings"]["keep_initial_if_worse"] is kept
    summary = json.loads(json.dumps(improved.to_dict()))
    assert summary["kept_initial"] is False and summary["warning"] is None
    assert summary["gradient_correlation_registered"] == summary["gradient_correlation_after"]


@pytest.mark.parametrize("suffix", [".tfm", ".h5"])
def test_kept_transform_saves_and_resamples(worse_kept, prostatex_t2, adc, tmp_path, suffix):
    path = reg.save_transform(worse_kept.transform, tmp_path / f"kept{suffix}")
    back = sitk.ReadTransform(str(path))
    assert np.array_equal(_array(reg.resample_onto(prostatex_t2, adc, back)), _array(worse_kept.resampled))


@pytest.mark.parametrize("transform, kind, iterations", [("affine", sitk.AffineTransform, 10),
                                                         ("bspline", sitk.CompositeTransform, 5)])
def test_kept_identity_has_the_chosen_type(prostatex_t2, adc, gland, far_box, identity_resampled,
                                           transform, kind, iterations):
    result = reg.register(prostatex_t2, adc, transform=transform, fixed_mask=far_box, selection_mask=gland,
                          iterations=iterations)
    assert result.gradient_correlation_registered < result.gradient_correlation_before - 0.1  # measured 0.37 / 0.40
    assert result.kept_initial and "kept the scanner alignment" in result.warning
    assert isinstance(result.transform.Downcast(), kind)
    assert np.allclose(_array(result.resampled), _array(identity_resampled), atol=1e-4)


def test_identity_like_keeps_layout_and_maps_points_to_themselves():
    rigid = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.1, 0.1, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 1.0))
    affine.SetCenter((1.0, 2.0, 3.0))
    affine.SetTranslation((3.0, 0.0, -2.0))
    image = sitk.Image([10, 10, 10], sitk.sitkFloat32)
    bspline = sitk.BSplineTransformInitializer(image, [2, 2, 2], order=3)
    bspline.SetParameters(tuple(np.linspace(-2.0, 2.0, len(bspline.GetParameters()))))
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(rigid)
    composite.AddTransform(bspline)
    points = [(0.0, 0.0, 0.0), (3.0, 4.5, 7.0), (9.0, 1.0, 2.0)]
    for transform, kind in ((rigid, sitk.Euler3DTransform), (affine, sitk.AffineTransform),
                            (composite, sitk.CompositeTransform), (sitk.TranslationTransform(3, (1, 2, 3)),
                                                                   sitk.Euler3DTransform)):
        identity = reg.identity_like(transform)
        assert isinstance(identity.Downcast(), kind)
        for point in points:
            assert np.allclose(identity.TransformPoint(point), point, atol=1e-12)
    assert reg.identity_like(rigid).GetCenter() == rigid.GetCenter()
    kept = reg.identity_like(composite)
    assert kept.GetNumberOfTransforms() == 2
    assert kept.GetNthTransform(1).Downcast().GetFixedParameters() == bspline.GetFixedParameters()  # same mesh


def test_worse_means_strictly_lower_beyond_a_tiny_tolerance():
    assert not reg.is_worse(0.5, 0.5)  # equal is not worse
    assert not reg.is_worse(0.5, 0.5 - 1e-9)  # float noise is not worse
    assert not reg.is_worse(0.5, 0.6)
    assert reg.is_worse(0.5, 0.5 - 1e-5)
    assert reg.is_worse(0.229, 0.177)


# --------------------------------------------------------------------------------------------
# Improving registrations are untouched


def test_improving_registration_is_unchanged(improved, prostatex_t2, adc, gland):
    assert improved.gradient_correlation_after > improved.gradient_correlation_before  # measured 0.63 -> 0.75
    assert improved.kept_initial is False and improved.warning is None
    assert improved.gradient_correlation_registered == improved.gradient_correlation_after
    # The option only matters when it got worse: bit-identical result without it.
    again = reg.register(prostatex_t2, adc, selection_mask=gland, iterations=ITERATIONS, keep_initial_if_worse=False)
    assert again.transform.GetParameters() == improved.transform.GetParameters()
    assert again.gradient_correlation_after == improved.gradient_correlation_after
    assert again.warning is None and not again.kept_initial


# --------------------------------------------------------------------------------------------
# Command line


@pytest.fixture()
def far_box_file(far_box, tmp_path_factory):
    path = tmp_path_factory.mktemp("masks") / "far_box.nii.gz"
    sitk.WriteImage(far_box, str(path))
    return path


@pytest.mark.parametrize("option, kept", [([], True), (["--no-keep-initial-if-worse"], False)])
def test_cli_warns_on_stderr_and_exits_0(prostatex_case, prostatex_t2, far_box_file, identity_resampled,
                                         tmp_path, capsys, option, kept):
    from ProstateAIApp.cli import main

    out, tfm, report = tmp_path / "adc_on_t2.nii.gz", tmp_path / "adc_to_t2.tfm", tmp_path / "report.json"
    code = main(["register", str(prostatex_case / "t2w"), str(prostatex_case / "adc"), str(out),
                 "--fixed-mask", str(far_box_file), "--selection-mask", str(prostatex_case / "masks" / "prostate.nii.gz"),
                 "--iterations", str(ITERATIONS), "--save-transform", str(tfm), "--report", str(report), *option])
    assert code == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith(WARNING_PREFIX)]
    assert len(warnings) == 1
    assert "warning" not in captured.out
    summary = json.loads(report.read_text())
    assert summary["kept_initial"] is kept
    assert warnings[0] == WARNING_PREFIX + summary["warning"]
    assert warnings[0].startswith(WARNING_PREFIX + "registration lowered the gradient correlation from ")
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    if kept:
        assert warnings[0].endswith("; kept the scanner alignment")
        assert summary["gradient_correlation_after"] == summary["gradient_correlation_before"]
        assert "(kept the scanner alignment)" in captured.out
        assert sitk.ReadTransform(str(tfm)).Downcast().GetParameters() == (0.0,) * 6
        assert np.allclose(written, _array(identity_resampled), atol=1e-4)
    else:
        assert warnings[0].endswith("; result kept as asked (--no-keep-initial-if-worse)")
        assert summary["gradient_correlation_after"] < summary["gradient_correlation_before"]
        assert not np.allclose(written, _array(identity_resampled), atol=1e-4)


def test_cli_option_defaults_to_keep(tmp_path):
    import argparse

    from MRStandardizeLib import cli

    parser = argparse.ArgumentParser()
    cli._register_registration(parser.add_subparsers(dest="command"))
    base = ["register", "F", "M", str(tmp_path / "o.nii.gz")]
    assert parser.parse_args(base).keep_initial_if_worse is True
    assert parser.parse_args(base + ["--no-keep-initial-if-worse"]).keep_initial_if_worse is False
    assert parser.parse_args(base + ["--keep-initial-if-worse"]).keep_initial_if_worse is True
