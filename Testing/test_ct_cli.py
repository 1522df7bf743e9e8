"""`prostateai ct` and `prostateai info` on real CT: exact preset mapping, reports, options, and
bad input -> exit status 2 with a clear message and no output file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ProstateAIApp.cli import main

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def small_ct(ct_data, tmp_path_factory):
    """A 160 x 160 x 10 block of the chest CT (with the lesion) and its label, as NRRD files."""
    folder = tmp_path_factory.mktemp("small_ct")
    image = sitk.ReadImage(str(ct_data / "radiomics_lung1" / "lung1_image.nrrd"))[176:336, 240:400, 28:38]
    label = sitk.ReadImage(str(ct_data / "radiomics_lung1" / "lung1_label.nrrd"))[176:336, 240:400, 28:38]
    sitk.WriteImage(image, str(folder / "ct.nrrd"))
    sitk.WriteImage(label, str(folder / "label.nrrd"))
    return folder / "ct.nrrd", folder / "label.nrrd"


def _read(path):
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _lungs_uint8(hu):
    return np.clip(np.rint((hu.astype(np.float64) + 1350) / 1500 * 255), 0, 255)


def test_lungs_preset_uint8_exact_with_report(ct_data, tmp_path):
    source = ct_data / "radiomics_lung1" / "lung1_image.nrrd"
    out, report = tmp_path / "lungs.nii.gz", tmp_path / "report.json"
    assert main(["ct", str(source), str(out), "--preset", "lungs", "--dtype", "uint8", "--report", str(report)]) == 0
    image, values = _read(out)
    original, hu = _read(source)
    assert values.dtype == np.uint8
    np.testing.assert_array_equal(values, _lungs_uint8(hu))
    assert image.GetSize() == original.GetSize() and np.allclose(image.GetOrigin(), original.GetOrigin())
    facts = json.loads(report.read_text())
    assert facts["window"] == [-1350.0, 150.0] and facts["normalize"] == "minmax" and facts["dtype"] == "uint8"
    assert [s["name"] for s in facts["steps"]] == ["validate", "window", "normalize"]
    assert facts["hu"]["already_hu"] is True and facts["geometry"]["size"] == [512, 512, 48]


def test_installed_entry_point_and_progress(small_ct, tmp_path):
    """The real `prostateai` script: exact mapping, PROGRESS lines, and exit status 2 without traceback."""
    script = Path(sys.executable).parent / "prostateai"
    if not script.exists():
        pytest.skip("prostateai entry point not installed (pip install -e .)")
    ct, _ = small_ct
    out = tmp_path / "lungs.nrrd"
    done = subprocess.run([str(script), "ct", str(ct), str(out), "--window", "-600", "1500", "--dtype", "uint8", "--progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "PROGRESS 1.0000 Done" in done.stderr and "Wrote" in done.stdout
    np.testing.assert_array_equal(_read(out)[1], _lungs_uint8(_read(ct)[1]))
    bad = subprocess.run([str(script), "ct", str(ct), str(tmp_path / "bad.nrrd"), "--preset", "lung"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Unknown window preset 'lung'" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad.nrrd").exists()


def _bad_inputs(ct_data, prostatex_data, folder: Path) -> dict:
    folder.mkdir(exist_ok=True)
    ramp = np.linspace(-1000, 1000, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    ramp[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(ramp), str(folder / "nan.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 40, np.int16)), str(folder / "constant.nrrd"))
    data = (ct_data / "dcmqi_ct3slice_seg" / "ct-3slice" / "01.dcm").read_bytes()
    (folder / "corrupt.dcm").write_bytes(data[: len(data) // 3])
    return {
        "2d": (ct_data / "pydicom_ct_small" / "CT_small.dcm", "2D"),
        "nan": (folder / "nan.nrrd", "NaN or infinite"),
        "constant": (folder / "constant.nrrd", "constant"),
        "missing": (folder / "missing.nrrd", "does not exist"),
        "corrupt_dicom": (folder / "corrupt.dcm", "Could not read"),
        "label_map": (ct_data / "radiomics_lung1" / "lung1_label.nrrd", "label map"),
        "segmentation": (ct_data / "ts_abdomen_dicom" / "example_seg_dicom.nii.gz", "label map"),
        "mr_dicom": (prostatex_data / "ProstateX-0000" / "t2w", "MR image, not CT"),
    }


@pytest.mark.parametrize("case", ["2d", "nan", "constant", "missing", "corrupt_dicom", "label_map", "segmentation", "mr_dicom"])
def test_bad_input_exit_2_and_no_output(case, ct_data, prostatex_data, tmp_path, capsys):
    source, message = _bad_inputs(ct_data, prostatex_data, tmp_path / "inputs")[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = main(["ct", str(source), str(out_dir / "out.nii.gz"), "--preset", "lungs", "--report", str(out_dir / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("prostateai ct: error: ") and message in err
    assert list(out_dir.iterdir()) == []  # no output, no report, no temporary file


@pytest.mark.parametrize("options, message", [
    (["--percentile", "1", "99"], "Quantiles must lie in [0, 1]"),
    (["--window", "40", "-5"], "width must be positive"),
    (["--clip", "100", "-100"], "empty"),
    (["--normalize", "zscore", "--dtype", "uint8"], "float32"),
    (["--normalize", "none", "--dtype", "uint16"], "needs --normalize minmax"),
    (["--spacing", "1", "0", "1"], "voxel size (mm) must lie in [0.01, 100]"),  # argparse usage errors
    (["--size", "10", "0", "10"], "size (voxels) must lie in [1, 4096]"),
    (["--denoise", "median", "--median-radius", "0"], "median radius must lie in [1, 10]"),
    (["--mask", "LABEL"], "--mask is used for"),
    (["--normalize", "zscore", "--mask", "WRONG_GRID"], "not on the CT image's grid"),
])
def test_bad_options_exit_2_and_no_output(options, message, small_ct, ct_data, tmp_path, capsys):
    ct, label = small_ct
    options = [str(label) if o == "LABEL" else str(ct_data / "radiomics_lung1" / "lung1_label.nrrd") if o == "WRONG_GRID" else o
               for o in options]
    out = tmp_path / "out.nii.gz"
    try:
        code = main(["ct", str(ct), str(out)] + options)
    except SystemExit as usage_error:  # argparse refuses a bad number before the command runs
        code = usage_error.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unsupported_output_format_fails_before_work(small_ct, tmp_path, capsys):
    ct, _ = small_ct
    assert main(["ct", str(ct), str(tmp_path / "out.png"), "--preset", "lungs"]) == 2
    assert "Unsupported output format 'out.png'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_percentile_zscore_with_mask_resample_and_crop(small_ct, tmp_path):
    ct, label = small_ct
    out, report = tmp_path / "z.nrrd", tmp_path / "z.json"
    rc = main(["ct", str(ct), str(out), "--percentile", "0.6", "0.99", "--normalize", "zscore", "--mask", str(label),
               "--spacing", "1", "1", "2.5", "--interpolator", "linear", "--size", "64", "64", "16", "--report", str(report)])
    assert rc == 0
    image, values = _read(out)
    facts = json.loads(report.read_text())
    assert values.dtype == np.float32 and image.GetSize() == (64, 64, 16) and image.GetSpacing() == (1.0, 1.0, 2.5)
    normalize_step = next(s for s in facts["steps"] if s["name"] == "normalize")
    assert normalize_step["method"] == "zscore" and normalize_step["masked"] is True
    crop_step = next(s for s in facts["steps"] if s["name"] == "crop_pad")
    assert crop_step["center"] == "mask"  # --mask with --size centres the crop on the lesion
    lo, hi = facts["window"]
    mean, std = normalize_step["mean"], normalize_step["std"]
    assert values.min() >= (lo - mean) / std - 1e-4 and values.max() <= (hi - mean) / std + 1e-4


def test_reference_grid_denoise_and_pad_value(small_ct, ct_data, tmp_path):
    ct, _ = small_ct
    reference = ct_data / "radiomics_lung1" / "lung1_image.nrrd"
    out = tmp_path / "onref.nii.gz"
    assert main(["ct", str(ct), str(out), "--reference", str(reference), "--interpolator", "nearest",
                 "--denoise", "median", "--median-radius", "1"]) == 0
    image, values = _read(out)
    ref = sitk.ReadImage(str(reference))
    assert image.GetSize() == ref.GetSize() and np.allclose(image.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    assert values[0, 0, 0] == -1024  # outside the small block: its minimum (air)
    padded = tmp_path / "padded.nii.gz"
    assert main(["ct", str(ct), str(padded), "--clip", "-1000", "1000", "--size", "170", "160", "10",
                 "--pad-value", "-3000"]) == 0
    assert np.all(_read(padded)[1][:, :, :5] == -1000)  # pad value in HU, clipped like the data


def test_info_text_and_json(ct_data, capsys):
    assert main(["info", str(ct_data / "radiomics_lung1" / "lung1_image.nrrd")]) == 0
    text = capsys.readouterr().out
    assert "16-bit signed integer" in text and "(512, 512, 48)" in text and "(0.5703, 0.5703, 5.0)" in text
    assert "min -1024  p1 -1013  p50 -880  p99 406  max 3071" in text
    assert "values are taken as HU already" in text
    assert main(["info", "--json", str(ct_data / "ts_abdomen_dicom" / "dicom")]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["hu"]["message"] == "Converted stored values to HU with slope 1, intercept -1024."
    assert facts["hu"]["modality"] == "CT" and facts["hu"]["n_files"] == 20
    assert facts["intensity"] == {"min": -1024.0, "p1": -1024.0, "p50": -981.0, "p99": 405.0, "max": 1839.0}
    assert facts["size"] == [512, 512, 20] and facts["spacing"][2] == pytest.approx(2.0)


def test_info_flags_label_maps_and_missing_files(ct_data, capsys):
    assert main(["info", str(ct_data / "radiomics_lung1" / "lung1_label.nrrd")]) == 0
    assert "Looks like a label map" in capsys.readouterr().out
    assert main(["info", str(ct_data / "nothing.nrrd")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dicom_padding_is_filled_before_percentiles(ct_data, tmp_path):
    """ct-3slice: 21.3 % of voxels are PixelPaddingValue (-3024 HU); they must not set the window's low end."""
    out, report = tmp_path / "p.nii.gz", tmp_path / "p.json"
    assert main(["ct", str(ct_data / "dcmqi_ct3slice_seg" / "ct-3slice"), str(out), "--percentile", "0.01", "0.99",
                 "--report", str(report)]) == 0
    facts = json.loads(report.read_text())
    padding = next(s for s in facts["steps"] if s["name"] == "padding")
    assert padding["voxels"] == 167316 and padding["padding_value"] == -3024 and padding["filled_with"] == -1024
    assert facts["window"][0] == -1024  # not -3024
    assert _read(out)[1].min() == -1024
