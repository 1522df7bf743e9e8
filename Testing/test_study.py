"""`prostateai segment --study DIR` on real ProstateX DICOM: the series are classified from their headers
and the axial T2, the ADC and the highest-b DWI are chosen from a study folder as it comes off a PACS
export or a CD (flat or nested, meaningless file names, extra series); inputs from different patients
are refused; --psa gives the PSA density. Study folders are built at test time in tmp_path.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from ProstateAIApp.cli import main
from ProstateAICore.errors import InputError
from ProstateAICore.imageio import read_image
from ProstateAILib import study
from cli_helpers import refused as _refused

pytestmark = pytest.mark.data

FAST = ["--no-tta", "--threads", "2"]  # both sides of every comparison run the same way
SERIES = {"T2": "t2w", "ADC": "adc", "HBV": "hbv"}




def _run(argv) -> tuple[int, str]:
    """`prostateai ARGV` in-process from a module-scoped fixture (no capsys there): exit status, stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


def _header(folder: Path):
    return pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)


def _fake_series(source: Path, dest: Path, description: str, count: int | None = None, **changes) -> str:
    """Copies of `source`'s files as a new series (new UIDs) with changed tags, written with pydicom."""
    dest.mkdir(parents=True)
    uid = generate_uid()
    files = sorted(source.iterdir())
    for i in range(count or len(files)):
        ds = pydicom.dcmread(files[i % len(files)])
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesDescription = description
        ds.SeriesNumber = 90 + len(description)
        for keyword, value in changes.items():
            setattr(ds, keyword, value(i) if callable(value) else value)
        ds.save_as(dest / f"IM{i + 1:04d}")
    return uid


# ---------------------------------------------------------------- study folders (module scope)

@pytest.fixture(scope="module")
def flat_study(prostatex_case, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """ProstateX-0000's T2, ADC and HBV in ONE folder, shuffled, named f0001... (no extension), with a
    text file, a DICOMDIR and a binary file beside them; and which source file each copy came from."""
    folder = tmp_path_factory.mktemp("flat") / "export"
    folder.mkdir()
    files = [f for name in SERIES.values() for f in sorted((prostatex_case / name).iterdir())]
    random.Random(7).shuffle(files)
    origin = {}
    for i, source in enumerate(files):
        shutil.copyfile(source, folder / f"f{i + 1:04d}")
        origin[folder / f"f{i + 1:04d}"] = source
    (folder / "README.txt").write_text("exported from PACS\n")
    (folder / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (folder / "f9999").write_bytes(bytes(range(256)) * 40)
    return folder, origin


@pytest.fixture(scope="module")
def nested_study(prostatex_data, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """ProstateX-0218 as a CD: PATIENT/STUDY/SERIESn/IMnnnn, plus a fake localizer (a copy of the T2,
    sagittal) and a fake sagittal T2 with more slices than the axial one."""
    case = prostatex_data / "ProstateX-0218"
    study_dir = tmp_path_factory.mktemp("cd") / "DICOM" / "PAT00001" / "STU00001"
    for n, name in enumerate(SERIES.values(), start=1):
        (study_dir / f"SER{n:05d}").mkdir(parents=True)
        for i, source in enumerate(sorted((case / name).iterdir())):
            shutil.copyfile(source, study_dir / f"SER{n:05d}" / f"IM{i + 1:04d}")
    sagittal = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    fakes = {
        "localizer": _fake_series(case / "t2w", study_dir / "SER00000", "localizer", ImageOrientationPatient=sagittal),
        "t2_tse_sag": _fake_series(case / "t2w", study_dir / "SER00009", "t2_tse_sag", count=40,
                                   ImageOrientationPatient=sagittal,
                                   ImagePositionPatient=lambda i: [-60.0 + 3.0 * i, -100.0, 100.0]),
    }
    return study_dir.parents[1], fakes


@pytest.fixture(scope="module")
def by_t2(prostatex_case, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("by_t2") / "out"
    code, _ = _run(["segment", "--t2", prostatex_case / "t2w", "--out", out, *FAST])
    assert code == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def by_study(flat_study, tmp_path_factory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("by_study") / "out"
    code, printed = _run(["segment", "--study", flat_study[0], "--out", out, "--psa", "13", *FAST])
    assert code == 0, printed
    return json.loads((out / "report.json").read_text()), printed, out


# ---------------------------------------------------------------- classification rules (no images)

@pytest.mark.parametrize("description, image_type, b_value, kind", [
    ("t2_tse_tra", ("ORIGINAL", "PRIMARY", "M", "NORM"), None, "T2"),
    ("Ax T2 FRFSE", (), None, "T2"),
    ("T2W_TSE_ax", (), None, "T2"),
    ("t2_tse_sag", (), None, "T2"),  # a T2; the orientation decides that it is not chosen
    ("ep2d_diff_tra_DYNDIST_ADC", ("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), 800.0, "ADC"),  # b on the ADC too
    ("Apparent Diffusion Coefficient (mm2/s)", (), None, "ADC"),
    ("dADC", (), None, "ADC"),
    ("ep2d_diff_tra_DYNDISTCALC_BVAL", ("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW"), 1000.0, "DWI"),
    ("ep2d_diff_b1400_new", (), None, "DWI"),
    ("", ("ORIGINAL", "PRIMARY"), 1400.0, "DWI"),  # the b-value alone
    ("DWI_HighB", (), None, "DWI"),
    ("t1_twist_tra_dyn", (), None, "DCE"),
    ("t1_vibe_tra_DCE", (), None, "DCE"),
    ("t1_tse_tra", (), None, "other"),  # tse, but T1-weighted
    ("localizer", ("ORIGINAL", "PRIMARY", "M"), None, "localizer"),
    ("AAHead_Scout", (), None, "localizer"),
    ("t2_loc_sag", (), None, "localizer"),
    ("any", ("ORIGINAL", "PRIMARY", "LOCALIZER"), None, "localizer"),
    ("ep2d_diff_FA", ("DERIVED", "PRIMARY", "DIFFUSION", "FA"), None, "other"),
    ("tfl_3d PD ref_tra", (), None, "other"),
    ("T2* gre", (), None, "other"),
])
def test_classify_from_tags(description, image_type, b_value, kind):
    assert study.classify(description, image_type, b_value)[0] == kind


def test_vendor_private_b_values():
    def dataset(manufacturer, tag, vr, value, creator=None):
        ds = pydicom.Dataset()
        ds.Manufacturer = manufacturer
        if creator:
            ds.add_new((tag[0], 0x0010), "LO", creator)
        ds.add_new(tag, vr, value)
        return ds

    assert study.b_value_of(dataset("SIEMENS", (0x0019, 0x100C), "UN", b"1400"))[0] == 1400  # as stored: untyped
    assert study.b_value_of(dataset("SIEMENS", (0x0019, 0x100C), "IS", "800"))[0] == 800
    assert study.b_value_of(dataset("GE MEDICAL SYSTEMS", (0x0043, 0x1039), "IS",
                                    ["1000001400", "8", "0", "0"]))[0] == 1400  # 10^9 offset removed
    assert study.b_value_of(dataset("Philips Medical Systems", (0x2001, 0x1003), "FL", 1000.0))[0] == 1000
    assert study.b_value_of(dataset("", (0x2001, 0x1003), "FL", 2000.0, creator="Philips Imaging DD 001"))[0] == 2000
    assert study.b_value_of(dataset("SIEMENS", (0x2001, 0x1003), "FL", 2000.0))[0] is None  # not Philips' tag here
    standard = pydicom.Dataset()
    standard.add_new((0x0018, 0x9087), "FD", 1500.0)
    assert study.b_value_of(standard) == (1500.0, "DiffusionBValue (0018,9087)")


# ---------------------------------------------------------------- choosing from real study folders

def test_flat_export_with_meaningless_names(flat_study, prostatex_case):
    folder, origin = flat_study
    selection = study.select_series(folder)
    assert len(selection.series) == 3  # README.txt, DICOMDIR and the binary file are skipped quietly
    for role, name in SERIES.items():
        chosen = selection.by_role()[role]
        expected = _header(prostatex_case / name)
        assert chosen.description == expected.SeriesDescription and chosen.uid == expected.SeriesInstanceUID, role
        assert {origin[f].parent.name for f in chosen.files} == {name} and len(chosen.files) == 19
        assert chosen.reason
    assert selection.hbv.b_value == 1000
    with study.series_folders(selection) as folders:  # a flat folder: one folder of links per series
        linked = folders["T2"]
        assert read_image(linked).GetSize() == (384, 384, 19)
    assert not linked.exists()


def test_study_gives_the_same_result_as_the_t2(by_study, by_t2):
    report, printed, out = by_study
    assert abs(report["volumes_ml"]["prostate"] - by_t2["volumes_ml"]["prostate"]) <= 0.1
    lines = printed.strip().splitlines()
    for line, role in zip(lines, ("T2", "ADC", "HBV")):  # one line per role: role, description, UID, reason
        entry = report["study"][role]
        assert line.split()[0] == role and entry["series_description"] in line
        assert entry["series_instance_uid"] in line and entry["reason"] in line
    assert report["study"]["T2"]["series_description"] == "t2_tse_tra"
    assert report["study"]["HBV"]["b_value"] == 1000
    assert {s["kind"] for s in report["study_series"]} == {"T2", "ADC", "DWI"}
    assert sorted(report["inputs"]) == ["ADC", "HBV", "T2"]
    assert not Path(report["inputs"]["T2"]["path"]).exists()  # the folder of links is gone
    assert (out / "prostate.nii.gz").exists()


def test_psa_density(by_study):
    report, printed, _ = by_study
    assert report["psa_ng_ml"] == 13.0
    assert report["psa_density_ng_ml2"] == round(13.0 / report["volumes_ml"]["prostate"], 3)
    assert f"density {report['psa_density_ng_ml2']:.3f}" in printed.strip().splitlines()[-1]


def test_nested_cd_skips_the_localizer_and_the_sagittal_t2(nested_study, prostatex_data):
    root, fakes = nested_study
    case = prostatex_data / "ProstateX-0218"
    selection = study.select_series(root)
    kinds = {s.description: (s.kind, s.orientation) for s in selection.series}
    assert kinds["localizer"] == ("localizer", "sagittal") and kinds["t2_tse_sag"] == ("T2", "sagittal")
    assert max(selection.series, key=lambda s: s.n_slices).description == "t2_tse_sag"  # more slices, not axial
    for role, name in SERIES.items():
        chosen = selection.by_role()[role]
        assert chosen.uid == _header(case / name).SeriesInstanceUID and chosen.uid not in fakes.values(), role
    assert selection.hbv.b_value == 1600
    with study.series_folders(selection) as folders:  # one series per folder: read in place
        assert folders == {role: c.folder for role, c in selection.by_role().items()}


def test_multi_b_series_gives_its_highest_b_files(prostatex_case, tmp_path):
    """A DWI series holding b=50 and b=1000 images: the HBV is its b=1000 files, read as one volume."""
    folder = tmp_path / "study"
    shutil.copytree(prostatex_case / "t2w", folder / "t2")
    shutil.copytree(prostatex_case / "hbv", folder / "dwi")
    for source in sorted((prostatex_case / "hbv").iterdir()):
        ds = pydicom.dcmread(source)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds[0x0019, 0x100C].value = b"50"
        ds.save_as(folder / "dwi" / f"b50_{source.name}")
    selection = study.select_series(folder)
    assert selection.hbv.b_value == 1000 and len(selection.hbv.files) == 19
    assert "b=50" in selection.hbv.reason and selection.adc is None
    with study.series_folders(selection) as folders:
        hbv = read_image(folders["HBV"])
    reference = read_image(prostatex_case / "hbv")
    assert np.array_equal(sitk.GetArrayFromImage(hbv), sitk.GetArrayFromImage(reference))


# ---------------------------------------------------------------- refusals

def test_no_axial_t2_is_refused(prostatex_case, tmp_path, capsys):
    folder = tmp_path / "study"
    for name in ("adc", "hbv"):
        shutil.copytree(prostatex_case / name, folder / name)
    _refused(["segment", "--study", folder, "--out", tmp_path / "out"], capsys, "No axial T2", "ADC")
    assert not (tmp_path / "out").exists()


def test_axial_t2s_of_two_studies_are_refused(prostatex_data, tmp_path):
    folder = tmp_path / "study"
    for case in ("ProstateX-0000", "ProstateX-0218"):
        shutil.copytree(prostatex_data / case / "t2w", folder / case)
    with pytest.raises(InputError, match="2 studies.*ProstateX-0000.*ProstateX-0218"):
        study.select_series(folder)


def test_different_patients_are_refused_explicit_inputs(prostatex_data, tmp_path, capsys):
    _refused(["segment", "--t2", prostatex_data / "ProstateX-0000" / "t2w",
              "--adc", prostatex_data / "ProstateX-0218" / "adc", "--out", tmp_path / "out"],
             capsys, "different patients", "ProstateX-0000", "ProstateX-0218", "--allow-mismatch")
    assert not (tmp_path / "out").exists()


def test_different_patients_in_a_study_folder(prostatex_data, tmp_path, capsys):
    folder = tmp_path / "study"
    shutil.copytree(prostatex_data / "ProstateX-0000" / "t2w", folder / "a")
    shutil.copytree(prostatex_data / "ProstateX-0218" / "adc", folder / "b")
    out = tmp_path / "out"
    _refused(["segment", "--study", folder, "--out", out], capsys,
             "different patients", "ProstateX-0000", "ProstateX-0218")
    assert not out.exists()
    assert main(["segment", "--study", str(folder), "--out", str(out), "--allow-mismatch", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["study"]["ADC"]["patient_id"] == "ProstateX-0218" and report["study"]["HBV"] is None
    assert any("different patients" in note and "--allow-mismatch" in note for note in report["notes"])
    assert "ANOTHER study or patient" in report["study"]["ADC"]["reason"]


def test_nifti_inputs_skip_the_patient_check(prostatex_data, tmp_path):
    nifti = tmp_path / "t2.nii.gz"
    sitk.WriteImage(read_image(prostatex_data / "ProstateX-0000" / "t2w"), str(nifti))
    assert study.identity_of_path(nifti) is None
    adc = study.identity_of_path(prostatex_data / "ProstateX-0218" / "adc")
    assert adc.patient_id == "ProstateX-0218"
    assert study.check_same_patient({"T2": None, "ADC": adc}) == []


@pytest.mark.parametrize("argv", [
    ["--study", "S", "--t2", "T"],  # mutually exclusive
    [],  # one of them is required
    ["--study", "S", "--psa", "-2"],
    ["--study", "S", "--psa", "nan"],
])
def test_argument_errors(argv, tmp_path, capsys):
    argv = [str(tmp_path / a) if a in ("S", "T") else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", *argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2


def test_study_with_adc_and_output_in_the_study_are_refused(flat_study, tmp_path, capsys):
    folder = flat_study[0]
    _refused(["segment", "--study", folder, "--adc", folder / "f0001", "--out", tmp_path / "out"], capsys, "--adc")
    _refused(["segment", "--study", folder, "--out", folder], capsys, "is the input")
