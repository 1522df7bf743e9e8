"""Reliability of `prostateai train --resume` and `prostateai evaluate` on bad input (real data).

Every bad input ends in one clear line on stderr with exit status 2 (InputError), no traceback,
nothing of a checkpoint is unpickled as code, and no input file is ever changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ProstateAIApp.cli import main
from ProstateAILib import train
from cli_helpers import refused as _refused

pytestmark = pytest.mark.data

SMALL = ("case13", "case25", "case38")  # the quickest PROMISE12 cases to preprocess
TINY = ["--iterations", "2", "--batch", "1", "--patch", "8,32,32", "--features", "4,8,8,8,8", "--val-every", "1",
        "--val-overlap", "0", "--no-val-tta", "--threads", "1", "--seed", "5"]




def _hashes(folder) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _data_list(path, promise12_data):
    path.write_text(json.dumps([{"image": str(promise12_data / f"{n}_t2.nii.gz"),
                                 "label": str(promise12_data / f"{n}_prostate.nii.gz"), "group": "g"} for n in SMALL]))
    return path


# ---------------------------------------------------------------- train --resume: safe checkpoints

class _Payload:
    """Unpickling this runs a shell command (what a malicious last.pt would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _bad_checkpoint(kind: str, path, marker) -> None:
    state = {"config": _Payload(marker), "model": {}, "optimizer": {}, "epoch": 1}
    if kind == "torch-save-code":
        torch.save(state, path)
    elif kind == "pickle-code":
        path.write_bytes(pickle.dumps(state))
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    else:  # a plain torch file, but not a training checkpoint
        torch.save({"model": {}, "epoch": "one"}, path)


@pytest.mark.parametrize("kind", ["torch-save-code", "pickle-code", "garbage", "wrong-keys"])
def test_resume_refuses_what_is_not_a_checkpoint(kind, tmp_path, promise12_data, capsys):
    run, marker = tmp_path / "run", tmp_path / "MARKER"
    run.mkdir()
    _bad_checkpoint(kind, run / "last.pt", marker)
    before = _hashes(tmp_path)
    data = _data_list(tmp_path / "list.json", promise12_data)
    _refused(["train", "--data", data, "--out", run, "--resume", "--epochs", "2"], capsys,
             "is not a ProstateAI training checkpoint", str(run / "last.pt"))
    assert not marker.exists()  # nothing in the file ran
    assert all(_hashes(tmp_path)[p] == h for p, h in before.items())


def test_resume_refuses_pickled_code_as_a_program(tmp_path, promise12_data):
    """The real command line (a child process): one line, exit 2, the payload never runs."""
    run, marker = tmp_path / "run", tmp_path / "MARKER"
    run.mkdir()
    _bad_checkpoint("torch-save-code", run / "last.pt", marker)
    data = _data_list(tmp_path / "list.json", promise12_data)
    done = subprocess.run([sys.executable, "-m", "ProstateAIApp.cli", "train", "--data", str(data), "--out", str(run),
                           "--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "not a ProstateAI training checkpoint" in done.stderr
    assert not marker.exists()


def test_no_source_loads_torch_files_with_pickled_code(repo_root):
    needle = "weights_only=" + "False"  # spelled in two parts so that this file does not match itself
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=repo_root,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed
    offenders = [name for name in listed
                 if (repo_root / name).is_file() and needle in (repo_root / name).read_text(errors="replace")]
    assert not offenders


def test_checkpoint_values_are_made_plain():
    odd = {"a": np.int64(3), "b": np.float32(0.5), "c": (np.arange(2), True), "d": [np.bool_(True)],
           "e": train.TrainConfig(data="d", out="o"), "big": 2**100}
    import io

    buffer = io.BytesIO()
    torch.save(train._plain(odd), buffer)
    buffer.seek(0)
    back = torch.load(buffer, weights_only=True)
    assert back["a"] == 3 and type(back["a"]) is int and back["b"] == 0.5 and back["c"] == ([0, 1], True)
    assert back["d"] == [True] and back["e"]["patch"] == (16, 80, 80) and back["big"] == 2**100
    with pytest.raises(TypeError):
        train._plain({"f": os.system})


class _Stop(Exception):
    pass


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, promise12_data, capsys):
    """A 2-epoch run stopped after epoch 1 and resumed (CLI) ends with the same weights, optimizer
    and sampler state as the same run without a stop: everything needed is in the weights-only file."""
    data = _data_list(tmp_path / "list.json", promise12_data)

    def config(out):
        return train.TrainConfig(data=str(data), out=str(out), epochs=2, iterations=2, batch=1, patch=(8, 32, 32),
                                 val_every=1, val_overlap=0.0, val_tta=False, seed=5, threads=1,
                                 net={"features": [4, 8, 8, 8, 8]})

    quiet = lambda message: None  # noqa: E731
    train.run_training(config(tmp_path / "straight"), log=quiet)

    def stop_after_epoch_1(fraction, message):
        if message.startswith("epoch 1/2 loss"):  # reported after last.pt of epoch 1 is written
            raise _Stop

    with pytest.raises(_Stop):
        train.run_training(config(tmp_path / "stopped"), progress=stop_after_epoch_1, log=quiet)
    stopped = torch.load(tmp_path / "stopped" / "last.pt", map_location="cpu", weights_only=True)
    assert stopped["epoch"] == 1

    t0 = time.time()  # no --epochs: the run's own count (2), not the command's default
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "stopped"), "--resume", "--threads", "1"]) == 0
    assert "resumed from epoch 1" in capsys.readouterr().out
    resumed = torch.load(tmp_path / "stopped" / "last.pt", map_location="cpu", weights_only=True)
    straight = torch.load(tmp_path / "straight" / "last.pt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 2 and [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert {int(s["step"]) for s in resumed["optimizer"]["state"].values()} == {4}  # 2 epochs x 2 iterations
    assert resumed["sampler_rng"] == straight["sampler_rng"]
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)
    # and the resumed epoch really trained: the weights moved away from those saved at epoch 1
    assert any(not torch.equal(resumed["model"][k], stopped["model"][k]) for k in stopped["model"])
    assert time.time() - t0 < 120


@pytest.mark.parametrize("bad, expected", [
    (["--patch", "8,x,32"], "--patch must be three positive whole numbers"),
    (["--features", "4,eight"], "--features must be positive whole numbers"),
    (["--label-map", "1:0"], "--label-map must be OLD=NEW"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--spacing", "1.5,1.5"], "--spacing must be three sizes in mm"),
    (["--spacing", "1.5,0,3.6"], "--spacing must be three sizes in mm"),
])
def test_train_refuses_malformed_numbers(bad, expected, tmp_path, promise12_data, capsys):
    data = _data_list(tmp_path / "list.json", promise12_data)
    _refused(["train", "--data", data, "--out", tmp_path / "run", *bad], capsys, expected)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- evaluate: label maps and outputs

@pytest.fixture()
def masks(tmp_path, prostatex_case, promise12_data):
    """Copies of real masks plus bad label maps built from them, in tmp_path/in."""
    folder = tmp_path / "in"
    folder.mkdir()
    px = sitk.ReadImage(str(prostatex_case / "masks" / "prostate.nii.gz"))
    sitk.WriteImage(px, str(folder / "px.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([px, px]), str(folder / "px_4d.nii.gz"))
    nan = sitk.GetArrayFromImage(px).astype(np.float32)
    nan[nan.shape[0] // 2, 10, 10] = np.nan
    image = sitk.GetImageFromArray(nan)
    image.CopyInformation(px)
    sitk.WriteImage(image, str(folder / "px_nan.nrrd"))  # NRRD: ITK's NIfTI reader turns NaN voxels into 0
    sitk.WriteImage(sitk.Cast(px, sitk.sitkFloat32) * 0.5, str(folder / "px_half.nii.gz"))
    sitk.WriteImage(sitk.Cast(px, sitk.sitkFloat32), str(folder / "px_float.nii.gz"))  # whole numbers: accepted
    noise = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 2000, sitk.GetArrayViewFromImage(px).shape)
                                   .astype(np.int16))
    noise.CopyInformation(px)
    sitk.WriteImage(noise, str(folder / "px_2000.nii.gz"))
    for name in SMALL[:2]:
        sitk.WriteImage(sitk.ReadImage(str(promise12_data / f"{name}_prostate.nii.gz")),
                        str(folder / f"{name}_prostate.nii.gz"))
    return folder


@pytest.mark.parametrize("pred, expected", [
    ("px_4d.nii.gz", "is not a 3D label map"),
    ("px_nan.nrrd", "NaN or infinite voxels"),
    ("px_half.nii.gz", "not a label map"),
    ("px_2000.nii.gz", "distinct labels"),
])
def test_evaluate_refuses_what_is_not_a_label_map(pred, expected, masks, tmp_path, capsys):
    before = _hashes(masks)
    t0 = time.time()
    _refused(["evaluate", "--pred", masks / pred, "--truth", masks / "px.nii.gz", "--json", tmp_path / "out.json"],
             capsys, expected, str(masks / pred))
    assert time.time() - t0 < 5  # refused before any per-label work
    # the same file as the reference, in a cohort list: named too
    (tmp_path / "list.csv").write_text(f"case,pred,truth\na,{masks / 'px.nii.gz'},{masks / pred}\n")
    _refused(["evaluate", "--list", tmp_path / "list.csv", "--csv", tmp_path / "out.csv"], capsys, expected,
             str(masks / pred), "Case 'a'")
    assert _hashes(masks) == before and not (tmp_path / "out.json").exists() and not (tmp_path / "out.csv").exists()


def test_evaluate_accepts_whole_number_floats_and_named_labels(masks, tmp_path, capsys):
    assert main(["evaluate", "--pred", str(masks / "px_float.nii.gz"), "--truth", str(masks / "px.nii.gz"),
                 "--json", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["labels"]["1"]["dice"] == 1.0
    # thousands of values are fine when --labels says which to score (comma-separated form)
    assert main(["evaluate", "--pred", str(masks / "px_2000.nii.gz"), "--truth", str(masks / "px.nii.gz"),
                 "--labels", "1,2", "--json", str(tmp_path / "n.json")]) == 0
    assert set(json.loads((tmp_path / "n.json").read_text())["labels"]) == {"1", "2"}
    _refused(["evaluate", "--pred", masks / "px.nii.gz", "--truth", masks / "px.nii.gz", "--labels", "1=a,2=a"],
             capsys, "repeats a value or a name")


def test_evaluate_refuses_duplicate_case_names(masks, tmp_path, capsys):
    a, b = masks / "case13_prostate.nii.gz", masks / "case25_prostate.nii.gz"
    listing = tmp_path / "list.csv"
    listing.write_text(f"case,pred,truth\nx,{a},{a}\nx,{b},{b}\n")
    before = _hashes(tmp_path)
    _refused(["evaluate", "--list", listing, "--csv", tmp_path / "out.csv"], capsys, "case 'x'", str(a), str(b))
    # case.nii and case.nii.gz in the prediction folder are one case: which one to score is ambiguous
    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    pred_dir.mkdir()
    truth_dir.mkdir()
    image = sitk.ReadImage(str(a))
    sitk.WriteImage(image, str(truth_dir / "case13.nii.gz"))
    sitk.WriteImage(image, str(pred_dir / "case13.nii.gz"))
    sitk.WriteImage(sitk.BinaryErode(image, [1, 1, 0]), str(pred_dir / "case13.nii"))
    before.update(_hashes(pred_dir))
    _refused(["evaluate", "--pred-dir", pred_dir, "--truth-dir", truth_dir, "--csv", tmp_path / "out.csv"], capsys,
             "case 'case13'", str(pred_dir / "case13.nii"), str(pred_dir / "case13.nii.gz"))
    assert all(_hashes(tmp_path)[p] == h for p, h in before.items()) and not (tmp_path / "out.csv").exists()


def test_evaluate_never_writes_over_an_input(masks, tmp_path, capsys):
    a, b = masks / "case13_prostate.nii.gz", masks / "case25_prostate.nii.gz"
    listing = tmp_path / "run.csv"
    listing.write_text(f"case,pred,truth\na,{a},{a}\nb,{b},{b}\n")
    before = {**_hashes(tmp_path)}
    # explicit outputs that are inputs: the --list file, a mask (also through a symbolic link), each other
    _refused(["evaluate", "--list", listing, "--csv", listing], capsys, "is the input", str(listing))
    _refused(["evaluate", "--list", listing, "--json", a, "--csv", tmp_path / "o.csv"], capsys, "is the input", str(a))
    os.symlink(listing, tmp_path / "link.csv")
    _refused(["evaluate", "--list", listing, "--csv", tmp_path / "link.csv"], capsys, "is the input")
    _refused(["evaluate", "--list", listing, "--json", tmp_path / "o.csv"], capsys, "the same file")
    # the default CSV (next to --json) would be the --list file: refused, not overwritten
    _refused(["evaluate", "--list", listing, "--json", tmp_path / "run.json"], capsys, "--csv (default)",
             str(listing))
    _refused(["evaluate", "--pred", a, "--truth", b, "--json", b], capsys, "is the input")
    assert all(_hashes(tmp_path)[p] == h for p, h in before.items())
    assert not {"o.csv", "run.json"} & {p.name for p in tmp_path.iterdir()}
    # a free output path works
    assert main(["evaluate", "--list", str(listing), "--json", str(tmp_path / "report.json")]) == 0
    assert (tmp_path / "report.csv").is_file() and _hashes(tmp_path)[listing] == before[listing]
