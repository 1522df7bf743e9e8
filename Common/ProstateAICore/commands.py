"""The command-line runner shared by each Lib's `cli` (`python -m CTPreprocessLib.cli ...`) and the
`prostateai` application, which assembles every Lib's sub-commands.

A Lib's `cli` module has `register(subparsers)`; every sub-command sets `func(args) -> int` and
declares its paths with `declare_paths(parser, inputs=[...], outputs=[...], output_dirs=[...])`
(argparse destinations), so that the runner refuses an output that is an input before anything runs.

What a user sees, whatever goes wrong:
- bad input (`InputError`): one line "prostateai CMD: error: ...", exit status 2;
- a bad argument: argparse's usage line, exit status 2 (the `*_arg` types below);
- Ctrl-C: "prostateai CMD: cancelled", exit status 130; SIGTERM (a job's Cancel): the same, 143.
  In-process ITK filters stop at their next progress/iteration event (`progress.observe_filter`
  gives every long filter such an event), and every output in progress is removed by the atomic
  writers, which clean up on any exception;
- anything unexpected: one line, exit status 1; the traceback only with `--debug`.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import traceback
from typing import Callable, Sequence

from .errors import Cancelled, InputError, Terminated
from .progress import print_progress, terminal_bar

Registrar = Callable[[argparse._SubParsersAction], None]

EXIT_INPUT_ERROR = 2
EXIT_CANCELLED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


# ------------------------------------------------------------------------------- argument types

def _number(kind, text: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = _number(int, text, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number (got {text})")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {text})")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (got {text})")
    return value


def finite_float(text: str) -> float:
    return _number(float, text, "a number")


def _bounded(kind, lo, hi, what: str, noun: str) -> Callable[[str], float | int]:
    def parse(text: str):
        value = _number(kind, text, noun)
        if not lo <= value <= hi:
            shown = f"[{lo:g}, {hi:g}]" if kind is float else f"[{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"{what} must lie in {shown} (got {text})")
        return value
    parse.__name__ = what  # argparse names the type in its message
    return parse


def bounded_float(lo: float, hi: float, what: str = "value") -> Callable[[str], float]:
    """A number in [lo, hi] (e.g. a voxel size in mm, a fraction)."""
    return _bounded(float, lo, hi, what, "a number")


def bounded_int(lo: int, hi: int, what: str = "value") -> Callable[[str], int]:
    """A whole number in [lo, hi] (e.g. a size in voxels, a thread count)."""
    return _bounded(int, lo, hi, what, "a whole number")


# ------------------------------------------------------------------------------ declared paths

def declare_paths(parser: argparse.ArgumentParser, inputs: Sequence[str] = (), outputs: Sequence[str] = (),
                  output_dirs: Sequence[str] = ()) -> None:
    """Name the argparse destinations that hold input paths, output files and output folders
    (values may be a path, a list of paths or a list of (in, out) pairs: use 'also.0' / 'also.1')."""
    parser.set_defaults(_paths={"inputs": tuple(inputs), "outputs": tuple(outputs), "output_dirs": tuple(output_dirs)})


def _values(args, names: Sequence[str]) -> list[tuple[str, str]]:
    """(label, path) for every path the named destinations hold; the label names the option."""
    found = []
    for name in names:
        dest, _, index = name.partition(".")
        value = getattr(args, dest, None)
        if value is None:
            continue
        label = "output" if dest in ("output", "out") else f"--{dest.replace('_', '-')}"
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if index:
                item = item[int(index)] if isinstance(item, (list, tuple)) else None
            if item is not None and item != "":
                found.append((label, str(item)))
    return found


def same_path(a, b) -> bool:
    """True when two paths name the same file or folder (hard links and symbolic links included),
    or would once created."""
    a, b = str(a), str(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def refuse_overwriting(outputs: dict, inputs) -> None:
    """InputError when an output ({label: path}) is one of `inputs` or another output. The runner
    calls it for the declared paths; commands call it again for paths known only at run time (files
    inside input folders, a default output name, files written beside OUT)."""
    inputs = [str(source) for source in inputs if source]
    for label, out in outputs.items():
        for source in inputs:
            if same_path(out, source):
                raise InputError(f"The {label} '{out}' is the input '{source}'; choose another output path "
                                 "(inputs are never overwritten).")
    items = list(outputs.items())
    for index, (label_a, path_a) in enumerate(items):
        for label_b, path_b in items[index + 1:]:
            if same_path(path_a, path_b):
                raise InputError(f"The {label_a} and {label_b} outputs are the same file '{path_a}'; give each "
                                 "output its own path.")


def check_paths(args) -> None:
    """Refuse (InputError) an output that is an input, an input inside an output folder (which is
    replaced as a whole), or two outputs that are the same file."""
    declared = getattr(args, "_paths", None)
    if not declared:
        return
    inputs = [path for _, path in _values(args, declared["inputs"])]
    outputs = _values(args, declared["outputs"]) + _values(args, declared["output_dirs"])
    for _, folder in _values(args, declared["output_dirs"]):
        for source in inputs:
            if _inside(source, folder) and not same_path(source, folder):
                raise InputError(f"The input '{source}' lies inside the output folder '{folder}', which is "
                                 "replaced as a whole; choose another output folder.")
    # Repeated options (--also X OUT twice) share a label: number them so none is lost from the dict.
    labelled = {f"{label} #{i}" if [l for l, _ in outputs].count(label) > 1 else label: path
                for i, (label, path) in enumerate(outputs, 1)}
    refuse_overwriting(labelled, inputs)


# -------------------------------------------------------------------------------------- running

def build_parser(registrars: Sequence[Registrar], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in registrars:
        register(sub)
    return parser


class _Interrupts:
    """Ctrl-C / SIGTERM seen while a SimpleITK filter ran a Python callback.

    Why: a KeyboardInterrupt raised inside a SimpleITK callback is printed by the C++ wrapper (a
    traceback) and turned into a RuntimeError. This excepthook records it silently, so that the
    runner can report "cancelled" for whatever exception comes out of the filter.
    """

    def __init__(self):
        self.seen: list[BaseException] = []
        self._previous = sys.excepthook

    def hook(self, kind, value, tb) -> None:
        if issubclass(kind, (KeyboardInterrupt, Cancelled)):
            self.seen.append(value)
        else:
            self._previous(kind, value, tb)

    def __enter__(self):
        sys.excepthook = self.hook
        return self

    def __exit__(self, *exc) -> None:
        sys.excepthook = self._previous


def _raise_terminated(signum, frame):
    raise Terminated("terminated")


def main(registrars: Sequence[Registrar], argv: list[str] | None = None, prog: str = "prostateai",
         description: str = "") -> int:
    # OpenMP threads that sleep instead of spin-waiting: on a busy 2-core machine spinning threads
    # made `segment` 2.5x slower (24.9 s vs 9.4 s measured); set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser(registrars, prog, description)
    args, extra = parser.parse_known_args(argv)
    # `--progress` (anywhere on the line) makes long commands print PROGRESS lines for jobs.Job.
    if "--progress" in extra:
        extra.remove("--progress")
        args.progress_fn = print_progress
    elif sys.stderr.isatty():
        args.progress_fn = terminal_bar()
    else:
        args.progress_fn = None
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    name = f"{prog} {args.command}"
    previous_term = _install(signal.SIGTERM, _raise_terminated)
    try:
        with _Interrupts() as interrupts:
            try:
                check_paths(args)
                return int(args.func(args) or 0)
            except BaseException as exc:  # noqa: BLE001 - every way out is reported in one line
                return _report(exc, interrupts.seen, name, args.debug)
    finally:
        _install(signal.SIGTERM, previous_term)


def _install(signum, handler):
    """Set a signal handler when this is the main thread (tests may call main() from another thread)."""
    try:
        return signal.signal(signum, handler)
    except (ValueError, TypeError):
        return None


def _report(exc: BaseException, interrupts: list[BaseException], name: str, debug: bool) -> int:
    stopped = [e for e in [exc, *interrupts] if isinstance(e, (KeyboardInterrupt, Cancelled))]
    if stopped:
        print(f"{name}: cancelled", file=sys.stderr)
        return EXIT_TERMINATED if any(isinstance(e, Terminated) for e in stopped) else EXIT_CANCELLED
    if isinstance(exc, InputError):
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if isinstance(exc, SystemExit):
        raise exc
    if isinstance(exc, MemoryError):
        print(f"{name}: error: not enough memory for this input (is the image far larger than expected?)",
              file=sys.stderr)
        return 1
    if debug:
        traceback.print_exception(exc)
    detail = " ".join(str(exc).split())[:300]
    print(f"{name}: internal error: {type(exc).__name__}: {detail} (run with --debug for the traceback)",
          file=sys.stderr)
    return 1


def exit_fast(code: int) -> None:
    """Leave with `code` without the interpreter's teardown.

    Why: unloading torch's module graph at exit costs ~0.4 s on the 2-core target machine (measured),
    about a tenth of `prostateai segment`. Every output is already written and closed (atomically)
    when a command returns; the standard streams are flushed here.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
