"""MR demo (MRStandardizeLib.demo) on the bundled ProstateX-0218 case, and the bundled sample checksums."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "Resources" / "SampleData"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOT_SAMPLES = {"README.md", "SHA256SUMS", "manifest.json", "LICENSE-TotalSegmentator-Apache-2.0"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- fast: the bundled files are the ones the manifest describes --------------------------------


def test_bundled_samples_match_manifest():
    manifest = json.loads((SAMPLE_DATA / "manifest.json").read_text())
    listed = {}
    for sample in manifest["samples"]:
        for key in ("name", "path", "modality", "licence", "attribution", "files"):
            assert sample.get(key), f"{sample.get('name')}: '{key}' missing"
        assert (SAMPLE_DATA / sample["path"]).exists()
        for sequence in sample["sequences"]:
            assert (SAMPLE_DATA / sequence["path"]).is_dir()
        for rel, digest in sample["files"].items():
            assert rel.startswith(sample["path"])
            assert _sha256(SAMPLE_DATA / rel) == digest, f"{rel}: sha256 differs from manifest.json"
        listed.update(sample["files"])
    on_disk = {p.relative_to(SAMPLE_DATA).as_posix() for p in SAMPLE_DATA.rglob("*") if p.is_file()} - NOT_SAMPLES
    assert on_disk == set(listed), "files in Resources/SampleData and manifest.json differ"
    sums = dict(reversed(line.split(None, 1)) for line in (SAMPLE_DATA / "SHA256SUMS").read_text().splitlines())
    assert sums == listed, "SHA256SUMS and manifest.json disagree"
    prostate = next(s for s in manifest["samples"] if s["name"] == "ProstateX-0218")
    assert prostate["licence"] == "CC-BY-3.0"
    assert {s["name"] for s in prostate["sequences"]} == {"t2w", "adc", "hbv"}
    assert sum(1 for rel in prostate["files"] if rel.endswith(".dcm")) == 60


# --- slow: the demo itself ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from MRStandardizeLib import demo

    out = tmp_path_factory.mktemp("mr_demo")
    return out, demo.run(out)


EXPECTED = (
    "mr_t2_n4.nii.gz", "mr_t2_bias_field.nii.gz", "mr_t2_n4.png", "mr_nyul_model.json", "mr_t2_nyul.nii.gz",
    "mr_nyul_histograms.png", "mr_adc_on_t2.nii.gz", "mr_adc_to_t2.tfm", "mr_registration_check.png",
    "mr_demo_summary.json",
)


def _same_grid_exactly(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection()


@pytest.mark.slow
def test_demo_writes_outputs_on_the_t2_grid(demo_run):
    from MRStandardizeLib import demo
    from ProstateAICore.imageio import read_image

    out, summary = demo_run
    for name in EXPECTED:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in EXPECTED:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert json.loads((out / "mr_demo_summary.json").read_text()) == summary
    t2 = read_image(demo.SAMPLE / "t2w")
    # NIfTI stores parts of the geometry as float32: compare with the T2 after the same NIfTI round trip.
    sitk.WriteImage(t2, str(out / "t2_roundtrip.nii.gz"))
    t2_nifti = sitk.ReadImage(str(out / "t2_roundtrip.nii.gz"))
    for name in ("mr_t2_n4.nii.gz", "mr_t2_bias_field.nii.gz", "mr_t2_nyul.nii.gz", "mr_adc_on_t2.nii.gz"):
        image = sitk.ReadImage(str(out / name))
        _same_grid_exactly(image, t2_nifti)
        np.testing.assert_allclose(image.GetOrigin(), t2.GetOrigin(), atol=1e-4)  # and the DICOM grid itself
        np.testing.assert_allclose(image.GetDirection(), t2.GetDirection(), atol=1e-6)
    corrected = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mr_t2_n4.nii.gz")))
    field = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mr_t2_bias_field.nii.gz")))
    # corrected = T2 / field, voxel by voxel
    np.testing.assert_allclose(corrected * field, sitk.GetArrayFromImage(t2).astype(np.float32), rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_demo_summary_numbers_are_sane(demo_run):
    out, summary = demo_run
    field = summary["n4"]
    assert 0 < field["bias_field_min"] < 1 < field["bias_field_max"] < 10
    assert field["bias_field_min"] <= field["bias_field_min_in_mask"] <= field["bias_field_max_in_mask"]
    bias = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mr_t2_bias_field.nii.gz")))
    assert bias.min() > 0 and np.isfinite(bias).all()

    nyul_info = summary["nyul"]
    standard = np.array(nyul_info["standard_landmarks"])
    assert len(standard) == len(nyul_info["percentiles"]) == 11
    assert np.all(np.diff(standard) > 0)
    assert standard[0] == pytest.approx(1.0) and standard[-1] == pytest.approx(100.0)
    # Nyul maps the T2's own landmarks onto the standard ones (not exactly: a few dark voxels map to <= 0 and
    # leave the "> 0" foreground, which moves the recomputed percentiles slightly).
    np.testing.assert_allclose(nyul_info["t2_landmarks_after"], standard, rtol=0.01, atol=0.15)
    from MRStandardizeLib import nyul

    assert nyul.load_model(out / "mr_nyul_model.json").standard_landmarks == pytest.approx(standard, abs=1e-4)

    reg = summary["registration"]
    assert reg["transform_type"] == "Euler3DTransform" and len(reg["restarts"]) == 1
    assert -1 <= reg["gradient_correlation_before"] <= reg["gradient_correlation_after"] <= 1
    rotation, translation = np.array(reg["transform_parameters"][:3]), np.array(reg["transform_parameters"][3:])
    assert np.all(np.abs(np.degrees(rotation)) < 10) and np.all(np.abs(translation) < 20)  # same-session series

    assert all(seconds >= 0 for seconds in summary["timings_seconds"].values())
    assert summary["total_seconds"] > 0


def test_demo_without_promise12_fits_on_the_t2_alone(tmp_path):
    from MRStandardizeLib import demo

    summary = demo.run(tmp_path, promise12=tmp_path / "no-such-folder", n4_quality="preview")
    assert summary["nyul"]["n_images"] == 2
    assert "no PROMISE12" in summary["nyul"]["training_set"]
    assert summary["n4"]["quality"] == "preview"
    for name in EXPECTED:
        assert (tmp_path / name).is_file(), name
