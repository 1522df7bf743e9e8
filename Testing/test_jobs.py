"""Job helpers the module Logic classes share (ProstateAILib.jobs): environment, start, finish states."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ProstateAILib import jobs
from ProstateAILib.errors import Cancelled, InputError

REPO = Path(__file__).resolve().parents[1]


def test_job_environment_puts_every_module_folder_first():
    env = jobs.job_environment({"PYTHONPATH": "/elsewhere", "OTHER": "1"})
    paths = env["PYTHONPATH"].split(os.pathsep)
    expected = [str(REPO / name) for name in ("ProstateAI", "CTPreprocess", "MRStandardize")]
    assert sorted(paths[:3]) == sorted(expected) and paths[-1] == "/elsewhere"
    assert env["OTHER"] == "1"
    for folder in paths[:3]:
        assert (Path(folder) / f"{Path(folder).name}Lib" / "__init__.py").is_file()


def test_job_python_is_this_interpreter_outside_slicer():
    assert jobs.job_python() == sys.executable


def test_failed_job_reports_the_commands_error(tmp_path):
    (tmp_path / "work").mkdir()
    job = jobs.start_job(["segment", "--t2", str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
                         str(tmp_path / "work"), "segmentation")
    job.wait(timeout=120)
    with pytest.raises(InputError, match="does not exist"):
        jobs.require_done(job, "The segmentation")
    with pytest.raises(InputError, match="custom message"):
        jobs.require_done(job, "The segmentation", "custom message")
    assert not (tmp_path / "out").exists()


def test_cancelled_and_running_jobs(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    # `n4` on a large synthetic volume at full quality runs long enough to be cancelled mid-way
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((rng.random((60, 200, 200)) * 100 + 50).astype(np.float32))
    sitk.WriteImage(image, str(work / "in.nrrd"))
    job = jobs.start_job(["n4", str(work / "in.nrrd"), str(work / "out.nrrd"), "--quality", "full"],
                         str(work), "N4 correction")
    with pytest.raises(InputError, match="still running"):
        jobs.require_done(job, "N4")
    jobs.discard_job(job, str(work))
    assert job.state == "cancelled" and not work.exists()
    with pytest.raises(Cancelled, match="N4 was cancelled"):
        jobs.require_done(job, "N4")


def test_a_job_that_cannot_start_removes_its_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(jobs, "job_python", lambda: str(tmp_path / "no-such-python"))
    with pytest.raises(InputError, match="Could not start the background segmentation"):
        jobs.start_job(["segment"], str(work), "segmentation")
    assert not work.exists()
