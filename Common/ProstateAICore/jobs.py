"""Out-of-process jobs with progress and a real cancel (used by the Slicer widgets and the browser app).

Long work (N4 at full quality, registration with restarts, training, inference) runs as
`python -m <Lib>.cli <command> ... --progress` in a child process, so the GUI never blocks and
Cancel really stops the computation: the child runs in its own process group, and cancel ends the
whole tree -- SIGTERM to the group, then SIGKILL (Linux, macOS); CTRL_BREAK to the group, then
`taskkill /T /F` (Windows). Outputs are written atomically by the command itself, so a cancelled job
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from .errors import Cancelled, InputError
from .progress import parse_progress


class Job:
    """Run `python -m MODULE ARGS... --progress` in a child process (MODULE: a Lib's `cli`).

    `poll()` is cheap and non-blocking (call it from a GUI timer); `progress`, `message`, `state`,
    `returncode` and `error` describe the job. States: "running", "done", "failed", "cancelled".
    """

    def __init__(self, module: str, args: list[str], python: str | None = None, env: dict | None = None):
        self.args = list(args)
        self.argv = [python or sys.executable, "-m", module, *self.args, "--progress"]
        self.progress = 0.0
        self.message = ""
        self.state = "pending"
        self.returncode: int | None = None
        self.error = ""
        self._tail: deque[str] = deque(maxlen=50)
        self._env = env
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._cancelled = False

    @property
    def pid(self) -> int | None:
        """Process id of the child (also its process-group id), None before start()."""
        return self._process.pid if self._process is not None else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "Job":
        env = dict(os.environ if self._env is None else self._env)
        self._process = subprocess.Popen(
            self.argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            **_NEW_PROCESS_GROUP,  # own process group: cancel reaches any helpers it starts
        )
        self.state = "running"
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        return self

    def _read_stderr(self) -> None:
        assert self._process and self._process.stderr
        for line in self._process.stderr:
            self._take_line(line)

    def _take_line(self, line: str) -> None:
        parsed = parse_progress(line)
        if parsed:
            self.progress, self.message = parsed
        elif line.strip():
            self._tail.append(line.rstrip())

    def poll(self) -> str:
        if self._process is None or self.state != "running":
            return self.state
        code = self._process.poll()
        if code is None:
            return self.state
        if self._reader:
            self._reader.join(timeout=2)
        return self._finish(code)

    def _finish(self, code: int) -> str:
        """Set the final state from the command's exit status."""
        self.returncode = code
        if self._cancelled:
            self.state = "cancelled"
        elif code == 0:
            self.state, self.progress = "done", 1.0
        else:
            self.state = "failed"
            errors = [line for line in self._tail if "error" in line.lower()]
            self.error = (errors or list(self._tail) or [f"exit status {code}"])[-1]
        return self.state

    def wait(self, timeout: float | None = None) -> str:
        if self._process is not None:
            self._process.wait(timeout=timeout)
        return self.poll()

    def cancel(self, grace_seconds: float = 3.0) -> None:
        """Stop the job and every process it started: politely first, forcibly after the grace time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._cancelled = True
        try:
            _ask_group_to_stop(self._process)
            self._process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
        except (ProcessLookupError, OSError):
            pass
        # Helpers the child started may outlive it (and hold files open): end the whole group anyway.
        _kill_group(self._process)
        self._process.wait()
        self.poll()


class Worker:
    """One long-lived child process that runs commands one after another (`ProstateAICore.worker`).

    Why: a second segmentation in a Slicer or browser session should not pay the interpreter start
    and `import torch` again (about 2-3 s of a ~5 s run on 2 cores). `submit` returns a job with
    the same interface as `Job`; Cancel ends the worker's whole process tree, exactly like a Job's,
    and the next `submit` starts a fresh worker. One job at a time.
    """

    def __init__(self, python: str | None = None, env: dict | None = None, preload: tuple[str, ...] = ()):
        self.argv = [python or sys.executable, "-m", "ProstateAICore.worker", *preload]
        self._env = env
        self._process: subprocess.Popen | None = None
        self._job: "WorkerJob | None" = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def submit(self, module: str, args: list[str]) -> "WorkerJob":
        if self._job is not None and self._job.poll() == "running":
            raise InputError("The background worker is busy; wait for the running job or cancel it.")
        return WorkerJob(self, module, args).start()

    def _send(self, job: "WorkerJob") -> subprocess.Popen:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._process = subprocess.Popen(
                    self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    env=dict(os.environ if self._env is None else self._env), **_NEW_PROCESS_GROUP)
                threading.Thread(target=self._read_stderr, args=(self._process,), daemon=True).start()
            self._job = job
            self._process.stdin.write(json.dumps({"module": job.module, "args": [*job.args, "--progress"]}) + "\n")
            self._process.stdin.flush()
            return self._process

    def _read_stderr(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            job = self._job
            if job is None:
                continue
            if line.startswith(DONE_PREFIX):
                job.exit_code = int(line[len(DONE_PREFIX):].strip() or 1)
            else:
                job._take_line(line)

    def close(self) -> None:
        """End the worker (and anything it started)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _kill_group(process)
            process.wait()


class WorkerJob(Job):
    """A command run by a `Worker`: finished when the worker reports its exit status."""

    def __init__(self, worker: Worker, module: str, args: list[str]):
        super().__init__(module, args)
        self.module, self.worker, self.exit_code = module, worker, None

    def start(self) -> "WorkerJob":
        self._process = self.worker._send(self)
        self.state = "running"
        return self

    def poll(self) -> str:
        if self._process is None or self.state != "running":
            return self.state
        if self.exit_code is not None:
            return self._finish(self.exit_code)
        code = self._process.poll()
        return self.state if code is None else self._finish(code or 1)  # the worker itself died

    def wait(self, timeout: float | None = None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == "running":
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.argv, timeout)
            time.sleep(0.05)
        return self.state

    def cancel(self, grace_seconds: float = 3.0) -> None:
        if self.poll() != "running":
            return
        self._cancelled = True
        self.worker.close()  # a cancel must stop the computation now: the whole worker tree goes
        self.poll()


DONE_PREFIX = "DONE "  # the worker's line after each command: DONE <exit status>


if sys.platform == "win32":
    _NEW_PROCESS_GROUP = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}

    def _ask_group_to_stop(process: subprocess.Popen) -> None:
        process.send_signal(signal.CTRL_BREAK_EVENT)  # reaches the child's whole process group

    def _kill_group(process: subprocess.Popen) -> None:
        # /T: the process and every descendant, /F: forcibly. A tree already gone is not an error.
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
else:
    _NEW_PROCESS_GROUP = {"start_new_session": True}  # the child leads a new session and process group

    def _ask_group_to_stop(process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGTERM)

    def _kill_group(process: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


# ---------------------------------------------------------------- helpers for the module Logic classes

MODULE_FOLDERS = ("Common", "CTPreprocess", "MRStandardize", "ProstateAI")


def job_python() -> str:
    """The Python that runs jobs: Slicer's PythonSlicer inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def job_environment(base: dict | None = None) -> dict:
    """`base` (default os.environ) with the extension's module folders first on PYTHONPATH, so the
    child imports the Lib packages. Source tree: <repo>/<Module>/<Module>Lib; an installed Slicer
    extension keeps every module in one qt-scripted-modules folder (the one holding ProstateAICore)."""
    here = Path(__file__).resolve().parents[1]
    folders = [here] + [here.parent / name for name in MODULE_FOLDERS]
    paths = list(dict.fromkeys(str(f) for f in folders if f.is_dir()))
    env = dict(os.environ if base is None else base)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def start_job(module: str, args: list[str], tempdir: str, what: str) -> Job:
    """Start `python -m MODULE ARGS` as a job; if it cannot start, remove `tempdir` and raise InputError."""
    try:
        return Job(module, args, python=job_python(), env=job_environment()).start()
    except OSError as error:
        shutil.rmtree(tempdir, ignore_errors=True)
        raise InputError(f"Could not start the background {what}: {error}") from None


def require_done(job: Job, what: str, failed_message: str | None = None) -> None:
    """Raise InputError (still running / failed) or Cancelled unless the job finished successfully."""
    state = job.poll()
    if state == "running":
        raise InputError(f"{what} is still running.")
    if state == "cancelled":
        raise Cancelled(f"{what} was cancelled.")
    if state != "done":
        raise InputError(failed_message or f"{what} failed: {job.error}")


def discard_job(job: Job, tempdir: str) -> None:
    """Cancel a job if it still runs and remove its temporary folder."""
    job.cancel()
    shutil.rmtree(tempdir, ignore_errors=True)
