"""What happens when things go wrong: every bad input, bad argument, overwrite, full disk and signal
ends in one clear line (or a correct result), nothing overwritten and nothing half-written.

Each bad input is built at test time from the shared real data (ProstateX-0000, PROMISE12). Commands
run as real processes (`python -m ProstateAIApp.cli`) where exit codes, signals and stderr matter;
the README table "What happens when..." lists the same cases.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ProstateAICore import commands, imageio
from ProstateAICore.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def cli(*argv, timeout=300, env=None) -> subprocess.CompletedProcess:
    """`prostateai ARGV` as a real process."""
    return subprocess.run([sys.executable, "-m", "ProstateAIApp.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2, pattern: str = "") -> str:
    """The run failed with `code` and exactly one stderr line (no traceback) matching `pattern`."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("PROGRESS")]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert pattern.lower() in lines[0].lower(), lines[0]
    return lines[0]


def digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(digest(p).encode() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files or staging folders a run left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".partial-" in p.name
                  or ".old-" in p.name or p.name.count(".") >= 3))


@pytest.fixture(scope="module")
def work(tmp_path_factory, prostatex_case, promise12_data):
    """Real inputs and the bad inputs made from them."""
    d = tmp_path_factory.mktemp("reliability")
    t2 = imageio.read_image(prostatex_case / "t2w")
    sitk.WriteImage(t2, str(d / "t2.nii.gz"))
    sitk.WriteImage(t2, str(d / "t2.nii"), useCompression=False)
    shutil.copy(promise12_data / "case38_t2.nii.gz", d / "small.nii.gz")
    for name in ("t2.nii.gz", "t2.nii"):
        data = (d / name).read_bytes()
        (d / f"trunc_{name}").write_bytes(data[: int(len(data) * 0.6)])
    header = bytearray((d / "t2.nii").read_bytes()[:352])
    struct.pack_into("<hhhh", header, 40, 3, 2000, 2000, 600)  # dim[0..3]: promise 2000 x 2000 x 600
    (d / "huge.nii").write_bytes(bytes(header) + bytes(4096))
    (d / "huge.nii.gz").write_bytes(gzip.compress(bytes(header) + bytes(4096)))
    nan = sitk.Cast(t2, sitk.sitkFloat32)
    nan[100, 100, 10] = float("nan")
    nan[101, 100, 10] = float("inf")
    sitk.WriteImage(nan, str(d / "nan.mha"))  # MetaImage keeps NaN (NIfTI through ITK does not)
    sitk.WriteImage(sitk.JoinSeries([t2, t2]), str(d / "four_d.nii.gz"))
    # DICOM series with a slice missing, and with a slice repeated (same position, another file name)
    files = sorted((prostatex_case / "t2w").iterdir())
    (d / "gap").mkdir()
    (d / "dup").mkdir()
    for i, f in enumerate(files):
        if i != 9:
            shutil.copy(f, d / "gap" / f.name)
        shutil.copy(f, d / "dup" / f.name)
    shutil.copy(files[9], d / "dup" / "zz-copy.dcm")
    return d


# ----------------------------------------------------------------------------- outputs vs inputs

def _overwrite_cases(d: Path) -> list[tuple[list, str]]:
    t2, small = d / "t2.nii.gz", d / "small.nii.gz"
    return [
        (["ct", small, small], "is the input"),
        (["n4", small, small, "--quality", "preview"], "is the input"),
        (["n4", small, d / "o.nii.gz", "--field", small], "is the input"),
        (["n4", small, d / "o.nii.gz", "--field", d / "o.nii.gz"], "same file"),
        (["nyul", "fit", "--images", small, t2, "--model", small], "is the input"),
        (["nyul", "apply", small, small, "--model", d / "m.json"], "is the input"),
        (["normalize", small, small], "is the input"),
        (["normalize", small, d / "n.nii.gz", "--stats-out", small], "is the input"),
        (["denoise", small, small], "is the input"),
        (["register", t2, small, small], "is the input"),
        (["register", t2, small, d / "r.nii.gz", "--also", t2, d / "r.nii.gz"], "same file"),
        (["segment", "--t2", t2, "--out", t2], "is the input"),
        (["segment", "--t2", t2, "--out", d], "inside the output folder"),
        (["calibrate-spacing", "--data", small, "--out", small], "is the input"),
    ]


def test_no_command_writes_over_an_input(work, capsys):
    before = {p.name: digest(p) for p in work.iterdir() if p.is_file()}
    for argv, message in _overwrite_cases(work):
        assert commands_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert {p.name: digest(p) for p in work.iterdir() if p.is_file()} == before


def commands_main(argv) -> int:
    from ProstateAIApp.cli import main

    return main([str(a) for a in argv])


def test_a_hard_link_to_the_input_is_the_input(work, tmp_path, capsys):
    link = tmp_path / "link.nii.gz"
    os.link(work / "small.nii.gz", link)
    assert commands_main(["normalize", work / "small.nii.gz", link]) == 2
    assert "is the input" in capsys.readouterr().err
    assert digest(link) == digest(work / "small.nii.gz")


# ---------------------------------------------------------------------------------- broken files

@pytest.mark.parametrize("name", ["trunc_t2.nii.gz", "trunc_t2.nii", "huge.nii", "huge.nii.gz"])
def test_truncated_or_overpromising_files_are_refused_before_reading(work, name):
    start = time.perf_counter()
    with pytest.raises(InputError, match="is incomplete: its header promises"):
        imageio.read_image(work / name)
    assert time.perf_counter() - start < 2.0  # no gigabytes allocated, nothing zero-filled


def test_truncated_input_ends_n4_and_segment_in_one_line(work, tmp_path):
    one_line_error(cli("n4", work / "trunc_t2.nii.gz", tmp_path / "o.nii.gz", "--quality", "preview"),
                   pattern="incomplete")
    one_line_error(cli("segment", "--t2", work / "trunc_t2.nii", "--out", tmp_path / "seg"), pattern="incomplete")
    assert list(tmp_path.iterdir()) == []


def test_nan_and_4d_inputs_are_refused(work, tmp_path):
    one_line_error(cli("segment", "--t2", work / "nan.mha", "--out", tmp_path / "seg"), pattern="NaN or infinite")
    one_line_error(cli("n4", work / "nan.mha", tmp_path / "o.nii.gz"), pattern="NaN or infinite")
    with pytest.raises(InputError, match=r"is 4D \(size \(384, 384, 19, 2\)\)"):
        imageio.validate_volume(imageio.read_image(work / "four_d.nii.gz"))
    assert list(tmp_path.iterdir()) == []


def test_dicom_series_with_a_missing_or_repeated_slice(work, prostatex_t2, tmp_path):
    with pytest.raises(InputError, match=r"not evenly spaced: 6\.00 mm between slices 9 and 10"):
        imageio.read_image(work / "gap")
    with pytest.raises(InputError, match="repeated slice position"):
        imageio.read_image(work / "dup")
    # --allow-irregular: onto a regular 3 mm grid, same extent as the complete series, and said so
    image, source = imageio.read_image_with_source(work / "gap", allow_irregular=True)
    assert image.GetSize() == prostatex_t2.GetSize()
    assert np.allclose(image.GetSpacing(), prostatex_t2.GetSpacing(), atol=1e-3)
    assert np.allclose(image.GetOrigin(), prostatex_t2.GetOrigin(), atol=1e-3)
    assert source.notes and "resampled onto a regular" in source.notes[0]
    full, filled = sitk.GetArrayFromImage(prostatex_t2), sitk.GetArrayFromImage(image)
    changed = [k for k in range(full.shape[0]) if np.abs(filled[k] - full[k]).max() > 0.01]
    assert changed == [9]  # only the missing slice is interpolated; the others stay (to 0.01 of ~1000)
    one_line_error(cli("segment", "--t2", work / "gap", "--out", tmp_path / "seg"), pattern="--allow-irregular")


# -------------------------------------------------------------------------------------- full disk

@pytest.fixture()
def full_disk(tmp_path):
    """A 1 MiB tmpfs (root only) filled up but for 16 KiB, unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    # Leave 16 KiB: less than any of the outputs below needs.
    (mount / "filler").write_bytes(bytes(shutil.disk_usage(mount).free - (16 << 10)))
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_is_an_error_and_leaves_nothing(work, full_disk):
    one_line_error(cli("n4", work / "t2.nii.gz", full_disk / "o.nii.gz", "--quality", "preview"), pattern="Could not write")
    one_line_error(cli("normalize", work / "t2.nii.gz", full_disk / "o.nii"), pattern="disk is full")
    one_line_error(cli("segment", "--t2", work / "t2.nii.gz", "--out", full_disk / "seg", "--threads", 2),
                   pattern="Could not write")
    assert [p.name for p in full_disk.iterdir()] == ["filler"]


# ----------------------------------------------------------------------------------------- signals

def _start(*argv, cwd=REPO) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ProstateAIApp.cli", *map(str, argv), "--progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            preexec_fn=_as_from_a_terminal)


def _as_from_a_terminal() -> None:
    """Ctrl-C's default action in the child, as a command typed in a terminal has: a test suite started
    in the background by a non-interactive shell (`make test &`) inherits SIGINT ignored, and Python then
    never raises KeyboardInterrupt (a local CI run saw exit 0 after SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_progress(proc: subprocess.Popen, at_least: float) -> None:
    for line in proc.stderr:
        if line.startswith("PROGRESS") and float(line.split()[1]) >= at_least:
            return
    raise AssertionError("the command ended before reaching that point")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_n4_is_cancelled_without_output(work, tmp_path, signum, code):
    proc = _start("n4", work / "t2.nii.gz", tmp_path / "o.nii.gz", "--field", tmp_path / "f.nii.gz")
    _wait_for_progress(proc, 0.05)  # inside the ITK filter
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if not line.startswith("PROGRESS") and line.strip()]
    assert proc.returncode == code and lines == ["prostateai n4: cancelled"], err[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_sigterm_at_any_point_of_segment_leaves_no_staging(work, tmp_path):
    """Kill points spread over reading, inference and writing: never a partial OUT or a staging folder."""
    for fraction in (0.0, 0.3, 0.9, 0.95, 0.99):
        out = tmp_path / f"seg{fraction}"
        proc = _start("segment", "--t2", work / "t2.nii.gz", "--out", out, "--threads", 2)
        try:
            _wait_for_progress(proc, fraction)
        except AssertionError:
            pass  # finished first: then OUT must be complete
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        assert proc.returncode in (0, 143)
        assert leftovers(tmp_path) == []
        if out.exists():  # written as a whole before the signal arrived (maybe just before exit)
            assert {p.name for p in out.iterdir()} == {"prostate.nii.gz", "zones.nii.gz", "probabilities",
                                                       "segmentation.seg.nrrd", "report.json"}


def test_stale_staging_of_a_killed_run_is_removed_by_the_next(work, tmp_path):
    out = tmp_path / "seg"
    proc = _start("segment", "--t2", work / "t2.nii.gz", "--out", out, "--threads", 2)
    stale = tmp_path / f".seg.partial-{proc.pid}-abc123"
    stale.mkdir()  # what SIGKILL during writing leaves (the process cannot clean up)
    proc.kill()
    proc.communicate(timeout=60)
    assert cli("segment", "--t2", work / "t2.nii.gz", "--out", out, "--threads", 2).returncode == 0
    assert leftovers(tmp_path) == [] and (out / "report.json").is_file()


def test_existing_out_is_replaced_as_a_whole_or_left_intact(work, tmp_path, full_disk):
    out = full_disk / "seg"
    out.mkdir()
    (out / "old.txt").write_text("previous results")
    # not enough room for the new results: the old OUT stays exactly as it was
    one_line_error(cli("segment", "--t2", work / "t2.nii.gz", "--out", out, "--threads", 2), pattern="Could not write")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "seg"]
    assert [p.name for p in out.iterdir()] == ["old.txt"] and (out / "old.txt").read_text() == "previous results"


# ------------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("argv, pattern", [
    (["segment", "--t2", "T2", "--out", "O", "--threads", "-2"], "argument --threads"),
    (["denoise", "IN", "OUT", "--iterations", "-3"], "argument --iterations"),
    (["ct", "IN", "OUT.nii.gz", "--spacing", "1", "1", "1e9"], "argument --spacing"),
    (["ct", "IN", "OUT.nii.gz", "--size", "100000", "10", "10"], "argument --size"),
    (["register", "F", "M", "O.nii.gz", "--restarts", "0"], "argument --restarts"),
    (["n4", "IN", "OUT.nii.gz", "--shrink", "nan"], "argument --shrink"),
])
def test_bad_arguments_are_usage_errors(argv, pattern, capsys):
    with pytest.raises(SystemExit) as exit_info:
        commands_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert pattern in err and "Traceback" not in err


def test_bad_model_files_are_one_line_errors(work, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    one_line_error(cli("nyul", "apply", work / "small.nii.gz", tmp_path / "o.nii.gz", "--model", tmp_path),
                   pattern="is a folder")
    one_line_error(cli("nyul", "apply", work / "small.nii.gz", tmp_path / "o.nii.gz", "--model", deep),
                   pattern="nested too deeply")
    catalog = tmp_path / "Models.json"
    entries = json.loads((REPO / "Resources" / "Models.json").read_text())
    for entry in entries["models"]:
        entry["file"] = "Models/missing.pt"
    catalog.write_text(json.dumps(entries))
    one_line_error(cli("segment", "--t2", work / "small.nii.gz", "--out", tmp_path / "seg",
                       env={**os.environ, "PROSTATEAI_MODELS": str(catalog)}), pattern="missing.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Models.json", "deep.json"]


def test_unexpected_errors_are_one_line_and_traceback_with_debug(capsys):
    def register(sub):
        p = sub.add_parser("boom")
        p.set_defaults(func=lambda args: 1 / 0)

    assert commands.main([register], ["boom"], "prostateai") == 1
    err = capsys.readouterr().err
    assert err.strip() == ("prostateai boom: internal error: ZeroDivisionError: division by zero "
                           "(run with --debug for the traceback)")
    assert commands.main([register], ["--debug", "boom"], "prostateai") == 1
    assert "Traceback" in capsys.readouterr().err
