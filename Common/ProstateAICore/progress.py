"""Progress reporting shared by library functions, the CLI and out-of-process jobs.

Library functions take `progress: ProgressFn | None`, called as `progress(fraction, message)` with
fraction in [0, 1]. The CLI's `--progress` flag passes `print_progress`, which writes machine-readable
lines `PROGRESS <fraction> <message>` to stderr; `jobs.Job` parses them in the GUI process.
"""

from __future__ import annotations

import sys
from typing import Callable

import SimpleITK as sitk

ProgressFn = Callable[[float, str], None]
PREFIX = "PROGRESS "


def print_progress(fraction: float, message: str = "") -> None:
    print(f"{PREFIX}{min(max(fraction, 0.0), 1.0):.4f} {message}", file=sys.stderr, flush=True)


def terminal_bar(width: int = 30) -> ProgressFn:
    """A one-line progress bar on stderr (for people at a terminal; jobs use `print_progress`)."""
    def show(fraction: float, message: str = "") -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(round(fraction * width))
        end = "\n" if fraction >= 1.0 else ""
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction:6.1%} {message[:60]:<60}", end=end,
              file=sys.stderr, flush=True)
    return show


def parse_progress(line: str) -> tuple[float, str] | None:
    if not line.startswith(PREFIX):
        return None
    parts = line[len(PREFIX):].rstrip("\n").split(" ", 1)
    try:
        return float(parts[0]), parts[1] if len(parts) > 1 else ""
    except ValueError:
        return None


def scaled(progress: ProgressFn | None, start: float, stop: float) -> ProgressFn | None:
    """A callback mapping [0, 1] onto [start, stop] of `progress` (for sub-steps)."""
    if progress is None:
        return None
    return lambda fraction, message="": progress(start + (stop - start) * fraction, message)


def observe_filter(sitk_filter: sitk.ProcessObject, progress: ProgressFn | None, message: str) -> None:
    """Forward a SimpleITK filter's own progress events to `progress`.

    The callback is installed even without `progress`: a Python callback is where Ctrl-C / SIGTERM
    reach a long filter (ProstateAICore.commands turns them into "cancelled"); without one the
    signal waits until the filter has finished.
    """
    if progress is None:
        sitk_filter.AddCommand(sitk.sitkProgressEvent, _signal_point)
    else:
        sitk_filter.AddCommand(sitk.sitkProgressEvent, lambda: progress(sitk_filter.GetProgress(), message))


def _signal_point() -> None:
    """Does nothing: Python handles pending signals when C++ calls back into it."""
