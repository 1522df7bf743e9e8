"""`prostateai n4 | nyul | normalize | denoise` on real data: outputs, exit codes, no partial files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from ProstateAIApp.cli import main


@pytest.fixture(scope="module")
def files(promise12_data, tmp_path_factory):
    """Real PROMISE12 inputs plus deliberately broken ones, written once."""
    d = tmp_path_factory.mktemp("inputs")
    image = sitk.ReadImage(str(promise12_data / "case38_t2.nii.gz"))
    paths = {
        "t2": promise12_data / "case38_t2.nii.gz",
        "mask": promise12_data / "case38_prostate.nii.gz",
        "t2b": promise12_data / "case39_t2.nii.gz",
        "t2c": promise12_data / "case13_t2.nii.gz",  # other grid (160x160x15)
        "mask_other_grid": promise12_data / "case13_prostate.nii.gz",
    }
    sitk.WriteImage(image[:, :, 10], str(d / "slice2d.nii.gz"))
    sitk.WriteImage(sitk.Image(image.GetSize(), sitk.sitkInt16) + 100, str(d / "constant.nii.gz"))
    nan = sitk.Cast(image, sitk.sitkFloat32)
    nan[5, 5, 5] = float("nan")
    sitk.WriteImage(nan, str(d / "nan.mha"))  # (ITK's NIfTI round trip turns NaN into 0)
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(d / "empty_mask.nii.gz"))
    for name in ("slice2d", "constant", "nan", "empty_mask"):
        paths[name] = d / (f"{name}.mha" if name == "nan" else f"{name}.nii.gz")
    return {k: str(v) for k, v in paths.items()}


def run(*argv) -> int:
    return main([str(a) for a in argv])


def assert_same_grid(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetDirection(), b.GetDirection())


def test_n4_writes_corrected_image_and_field(files, tmp_path, capsys):
    out, field = tmp_path / "n4.nii.gz", tmp_path / "field.nrrd"
    code = run("n4", files["t2"], out, "--quality", "preview", "--iterations", "10", "10", "--field", field,
               "--mask", files["mask"], "--progress")
    assert code == 0
    captured = capsys.readouterr()
    assert "PROGRESS" in captured.err and "N4 level" in captured.err
    corrected, bias = sitk.ReadImage(str(out)), sitk.ReadImage(str(field))
    assert_same_grid(corrected, sitk.ReadImage(files["t2"]))
    assert corrected.GetPixelID() == bias.GetPixelID() == sitk.sitkFloat32
    assert sitk.GetArrayViewFromImage(bias).min() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field.nrrd", "n4.nii.gz"]


def test_nyul_fit_apply_and_histogram(files, tmp_path):
    model, png = tmp_path / "nyul.json", tmp_path / "hist.png"
    assert run("nyul", "fit", "--images", files["t2"], files["t2b"], files["t2c"], "--model", model, "--histogram", png) == 0
    payload = json.loads(model.read_text())
    assert payload["format_version"] == 1 and len(payload["standard_landmarks"]) == 11
    assert png.stat().st_size > 10_000
    out = tmp_path / "std.nii.gz"
    assert run("nyul", "apply", files["t2"], out, "--model", model, "--mask", files["mask"]) == 0
    std = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    gland = std[sitk.GetArrayFromImage(sitk.ReadImage(files["mask"])) > 0]
    assert np.percentile(gland, 1) == pytest.approx(1.0, abs=1e-3) and np.percentile(gland, 99) == pytest.approx(100.0, abs=1e-2)


def test_nyul_wrong_model_version_exits_2_without_output(files, tmp_path, capsys):
    model = tmp_path / "old.json"
    model.write_text(json.dumps({"format": "prostateai-nyul-model", "format_version": 0, "config": {},
                                 "standard_landmarks": []}))
    out = tmp_path / "std.nii.gz"
    assert run("nyul", "apply", files["t2"], out, "--model", model) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "format_version 0" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_normalize_dataset_level_stats_round_trip(files, tmp_path):
    stats, first, second = tmp_path / "stats.json", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert run("normalize", files["t2"], first, "--method", "zscore", "--fit-images", files["t2"], files["t2b"],
               "--stats-out", stats) == 0
    assert run("normalize", files["t2b"], second, "--method", "zscore", "--stats-in", stats) == 0
    pooled = np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(str(p))).ravel() for p in (first, second)])
    assert pooled.mean() == pytest.approx(0.0, abs=1e-4) and pooled.std() == pytest.approx(1.0, abs=1e-4)


def test_normalize_percentile_from_dicom(prostatex_data, tmp_path):
    out = tmp_path / "px.nii.gz"
    assert run("normalize", prostatex_data / "ProstateX-0000" / "t2w", out, "--method", "percentile") == 0
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert arr.shape == (19, 384, 384)
    assert np.percentile(arr, [1, 99]) == pytest.approx([0.0, 1.0], abs=1e-5)


def test_denoise_smooth_and_patch(files, tmp_path):
    out = tmp_path / "smooth.nii.gz"
    assert run("denoise", files["t2"], out, "--method", "smooth", "--iterations", "2") == 0
    assert_same_grid(sitk.ReadImage(str(out)), sitk.ReadImage(files["t2"]))
    crop = tmp_path / "crop.nii.gz"
    sitk.WriteImage(sitk.ReadImage(files["t2"])[60:90, 60:90, 10:13], str(crop))
    patch = tmp_path / "patch.nii.gz"
    assert run("denoise", crop, patch, "--method", "patch", "--noise-model", "gaussian", "--patch-radius", "1",
               "--sample-patches", "10") == 0
    assert sitk.ReadImage(str(patch)).GetSize() == (30, 30, 3)


BAD_CASES = [
    ("2d", ["n4", "{slice2d}", "{out}"], "2D"),
    ("constant", ["normalize", "{constant}", "{out}"], "constant"),
    ("nan", ["n4", "{nan}", "{out}", "--quality", "preview"], "NaN"),
    ("empty mask", ["n4", "{t2}", "{out}", "--mask", "{empty_mask}"], "empty"),
    ("mask grid", ["normalize", "{t2}", "{out}", "--mask", "{mask_other_grid}"], "grid"),
    ("nyul mask grid", ["nyul", "fit", "--images", "{t2}", "--masks", "{mask_other_grid}", "--model", "{out_json}"], "grid"),
    ("missing input", ["denoise", "{t2}.missing", "{out}"], "does not exist"),
    ("bad suffix", ["n4", "{t2}", "{out}.png"], "unsupported image format"),
    ("bad stats", ["normalize", "{t2}", "{out}", "--stats-in", "{t2}"], "not valid JSON"),
]


@pytest.mark.parametrize("argv,message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_input_exits_2_with_one_line_and_no_output(files, tmp_path, capsys, argv, message):
    names = dict(files, out=str(tmp_path / "out.nii.gz"), out_json=str(tmp_path / "model.json"))
    assert run(*[a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prostateai ") and message in err[0]
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file


def test_console_entry_point_runs_out_of_process(files, tmp_path):
    """The real `python -m MRStandardizeLib.cli` process (what jobs.Job starts): exit 2 on bad input."""
    out = tmp_path / "out.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "MRStandardizeLib.cli", "normalize", files["constant"], str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "constant" in proc.stderr and not out.exists()
