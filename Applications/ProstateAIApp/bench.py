"""`make bench`: every module's benchmark in one run (each times ours against its reference and prints ratios)."""

from __future__ import annotations

import importlib
import sys

BENCHES = ("CTPreprocessLib.bench", "MRStandardizeLib.bench", "ProstateAILib.bench")


def main(argv: list[str] | None = None) -> int:
    status = 0
    for name in BENCHES:
        print(f"===== {name} =====", flush=True)
        status = max(status, int(importlib.import_module(name).main([]) or 0))
    return status


if __name__ == "__main__":
    sys.exit(main())
