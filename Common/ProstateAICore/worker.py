"""`python -m ProstateAICore.worker [MODULE ...]`: the persistent worker that `jobs.Worker` talks to.

It imports the given modules once (e.g. ProstateAILib.pipeline, which brings torch), then runs one
command per line of standard input, `{"module": "ProstateAILib.cli", "args": [...]}`, through that
module's `main(argv)` -- the same code as `python -m ProstateAILib.cli ...` -- and after each writes
`DONE <exit status>` to standard error (progress lines go there too). A command's failure never ends
the worker; a cancel does (the caller ends the process tree).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

from .jobs import DONE_PREFIX


def _run(request: dict) -> int:
    try:
        return int(importlib.import_module(request["module"]).main(list(request["args"])) or 0)
    except SystemExit as usage:  # argparse: its message is already on stderr
        return usage.code if isinstance(usage.code, int) else 2
    except Exception as exc:  # noqa: BLE001 - one line, and the worker keeps serving
        print(f"worker: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc(limit=1)
        return 1


def main(preload: list[str]) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as commands.main does, but before torch is preloaded
    for module in preload:
        importlib.import_module(module)
    for line in sys.stdin:
        if line.strip():
            code = _run(json.loads(line))
            sys.stdout.flush()
            print(f"{DONE_PREFIX}{code}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
