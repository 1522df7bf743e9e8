"""Job helpers the module Logic classes share (ProstateAICore.jobs): environment, start, finish states."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from ProstateAICore import jobs
from ProstateAICore.errors import Cancelled, InputError

REPO = Path(__file__).resolve().parents[1]


def test_job_environment_puts_every_module_folder_first():
    env = jobs.job_environment({"PYTHONPATH": "/elsewhere", "OTHER": "1"})
    paths = env["PYTHONPATH"].split(os.pathsep)
    expected = [str(REPO / name) for name in ("Common", "ProstateAI", "CTPreprocess", "MRStandardize")]
    assert sorted(paths[:4]) == sorted(expected) and paths[-1] == "/elsewhere"
    assert env["OTHER"] == "1"
    assert (REPO / "Common" / "ProstateAICore" / "__init__.py").is_file()
    for folder in paths[:4]:
        if Path(folder).name != "Common":
            assert (Path(folder) / f"{Path(folder).name}Lib" / "__init__.py").is_file()


# A job whose command starts a grandchild that ignores SIGTERM (as a stuck helper process would).
TREE_JOB = """
import subprocess, sys, time
# The grandchild writes its pid only once it ignores SIGTERM, so the test cancels a stuck helper.
subprocess.Popen([sys.executable, "-c", "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)", sys.argv[1]])
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an ended child nobody has reaped yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the grandchild")
def test_cancel_ends_the_whole_process_tree(tmp_path):
    """Cancel reaches processes the job started, even one that ignores the polite SIGTERM."""
    (tmp_path / "tree_job.py").write_text(TREE_JOB)
    pid_file = tmp_path / "grandchild.pid"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    job = jobs.Job("tree_job", [str(pid_file)], env=env).start()
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild) and job.poll() == "running"
    job.cancel(grace_seconds=0.5)
    assert job.poll() == "cancelled"
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild outlived the cancel"


def test_job_python_is_this_interpreter_outside_slicer():
    assert jobs.job_python() == sys.executable


def test_failed_job_reports_the_commands_error(tmp_path):
    (tmp_path / "work").mkdir()
    job = jobs.start_job("ProstateAILib.cli", ["segment", "--t2", str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
                         str(tmp_path / "work"), "segmentation")
    job.wait(timeout=120)
    with pytest.raises(InputError, match="does not exist"):
        jobs.require_done(job, "The segmentation")
    with pytest.raises(InputError, match="custom message"):
        jobs.require_done(job, "The segmentation", "custom message")
    assert not (tmp_path / "out").exists()


def _long_n4_job(work):
    """`n4` on a large synthetic volume at full quality: runs long enough to be cancelled mid-way."""
    import numpy as np
    import SimpleITK as sitk

    work.mkdir()
    image = sitk.GetImageFromArray((np.random.default_rng(0).random((60, 200, 200)) * 100 + 50).astype(np.float32))
    sitk.WriteImage(image, str(work / "in.nrrd"))
    return jobs.start_job("MRStandardizeLib.cli", ["n4", str(work / "in.nrrd"), str(work / "out.nrrd"), "--quality", "full"], str(work), "N4")


def test_cancelled_and_running_jobs(tmp_path):
    work = tmp_path / "work"
    job = _long_n4_job(work)
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
        jobs.start_job("ProstateAILib.cli", ["segment"], str(work), "segmentation")
    assert not work.exists()


# -- the widgets' job polling (ProstateAIWidgetBase.JobPollingWidgetMixin) on real jobs -------------
# Qt widgets cannot run here; the mixin only sets plain properties on them, so simple holders stand in
# for the progress bar, labels, button and timer while the jobs themselves are real child processes.

class _Holder:
    def __init__(self, **values):
        self.__dict__.update(values)

    def connect(self, *args):
        pass


class _Timer:
    active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def _polling_widget():
    from headless import install

    install()
    from ProstateAIWidgetBase import JobPollingWidgetMixin

    class Widget(JobPollingWidgetMixin):
        def __init__(self):
            self.ui = _Holder(progressBar=_Holder(value=-1, visible=False), statusLabel=_Holder(text=""),
                              timeLabel=_Holder(text=""), cancelButton=_Holder(enabled=True))
            self._timer = _Timer()
            self.finished = []
            self.updates = 0

        def _updateButtons(self):
            self.updates += 1

        def _finishJob(self, running):
            self.finished.append((running.job.state, running))

    return Widget()


def _poll_until_finished(widget, seconds=120.0):
    import time

    end = time.monotonic() + seconds
    while widget.jobRunning and time.monotonic() < end:
        widget._pollJob()
        time.sleep(0.1)
    assert not widget.jobRunning, "the job did not end"


def test_job_polling_mixin_finishes_cancels_and_discards(tmp_path):
    widget = _polling_widget()
    (tmp_path / "a").mkdir()
    job = jobs.start_job("ProstateAILib.cli", ["segment", "--t2", str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
                         str(tmp_path / "a"), "segmentation")
    widget.startJob(job, str(tmp_path / "a"), "Segmentation", {"t2": "the T2 node"}, "Segmenting...")
    assert widget.jobRunning and widget._timer.active and widget.ui.progressBar.visible
    assert widget.ui.progressBar.value == 0 and widget.ui.statusLabel.text == "Segmenting..." and widget.updates == 1
    _poll_until_finished(widget)
    (state, running), = widget.finished
    assert state == "failed" and running.context == {"t2": "the T2 node"} and running.tempdir == str(tmp_path / "a")
    assert not widget._timer.active and not widget.ui.progressBar.visible and widget.updates == 2
    assert widget.ui.timeLabel.text.startswith("Segmentation: ") and widget.ui.timeLabel.text.endswith(" s")

    job = _long_n4_job(tmp_path / "b")
    widget.startJob(job, str(tmp_path / "b"), "N4")
    widget.onCancel()
    assert widget.ui.statusLabel.text == "Cancelling..."
    _poll_until_finished(widget)
    assert widget.finished[-1][0] == "cancelled"

    job = _long_n4_job(tmp_path / "c")
    widget.startJob(job, str(tmp_path / "c"), "N4")
    widget.discardRunningJob()  # module cleanup / scene close: no finish step, folder removed
    assert not widget.jobRunning and not widget._timer.active and job.state == "cancelled"
    assert not (tmp_path / "c").exists() and len(widget.finished) == 2


# ------------------------------------------------------------------------------ persistent worker

def test_worker_runs_commands_one_after_another_and_survives_failures(tmp_path, prostatex_case):
    """The second segmentation in a session pays no interpreter start or torch import (target <= 2 s)."""
    worker = jobs.Worker(env=jobs.job_environment(), preload=("ProstateAILib.pipeline",))
    try:
        failed = worker.submit("ProstateAILib.cli", ["segment", "--t2", str(tmp_path / "missing"), "--out",
                                                      str(tmp_path / "x")])
        assert failed.wait(timeout=120) == "failed" and "does not exist" in failed.error
        times, outputs = [], []
        for run in range(2):
            out = tmp_path / f"run{run}"
            start = time.perf_counter()
            job = worker.submit("ProstateAILib.cli", ["segment", "--t2", str(prostatex_case / "t2w"), "--out", str(out),
                                                       "--threads", "2"])
            assert job.wait(timeout=300) == "done", job.error
            times.append(time.perf_counter() - start)
            outputs.append((out / "prostate.nii.gz").read_bytes())
        print(f"worker: first segment {times[0]:.2f} s (torch preloaded while the failing job ran), second {times[1]:.2f} s")
        assert outputs[0] == outputs[1]  # the same result as a fresh process would give, run after run
        assert times[1] < 10  # the target is 2 s on an idle machine; CI shares its 2 cores
    finally:
        worker.close()


def test_worker_cancel_ends_its_tree_and_the_next_job_starts_a_new_worker(tmp_path):
    slow = tmp_path / "slow_cli.py"
    slow.write_text("import subprocess, sys, time\n"
                    "def main(argv):\n"
                    "    subprocess.Popen([sys.executable, '-c', \"import os, signal, sys, time; "
                    "signal.signal(signal.SIGTERM, signal.SIG_IGN); open(sys.argv[1], 'w').write(str(os.getpid())); "
                    "time.sleep(120)\", argv[0]])\n"
                    "    time.sleep(120)\n"
                    "    return 0\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), jobs.job_environment()["PYTHONPATH"]]))
    worker = jobs.Worker(env=env)
    try:
        pid_file = tmp_path / "grandchild.pid"
        job = worker.submit("slow_cli", [str(pid_file)])
        deadline = time.monotonic() + 30
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild, first_worker = int(pid_file.read_text()), worker.pid
        with pytest.raises(InputError, match="busy"):
            worker.submit("slow_cli", [str(pid_file)])
        job.cancel()
        assert job.poll() == "cancelled" and worker.pid is None
        deadline = time.monotonic() + 10
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild) and not _alive(first_worker)
        quick = tmp_path / "quick_cli.py"
        quick.write_text("def main(argv):\n    return 3\n")
        assert worker.submit("quick_cli", []).wait(timeout=60) == "failed" and worker.pid != first_worker
    finally:
        worker.close()
