"""`make bench`: every module's benchmark in one run (each times ours against its reference and prints
ratios), then the browser app's timings against their targets (`--only view` for just those)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

BENCHES = ("CTPreprocessLib.bench", "MRStandardizeLib.bench", "ProstateAILib.bench")
REPO = Path(__file__).resolve().parents[2]


def bench_view() -> int:
    """`prostateai view` in headless Chromium (the browser tests' timing run): server start, first frame,
    slice-scroll frames, segmentation and teaching-panel times, printed with the targets."""
    import pytest

    base = Path(tempfile.mkdtemp(prefix="prostateai-bench-view-"))
    # The whole file: its tests share one server and build on each other (segment, accept, paint...).
    code = pytest.main([str(REPO / "Testing" / "test_browser.py"), "-q", "-p", "no:cacheprovider", f"--basetemp={base}"])
    timings = base / "browser-timings.json"
    if timings.is_file():
        print(json.dumps(json.loads(timings.read_text()), indent=2))
    return int(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("modules", "view"), help="run one part")
    args = parser.parse_args(argv)
    status = 0
    if args.only in (None, "modules"):
        for name in BENCHES:
            print(f"===== {name} =====", flush=True)
            status = max(status, int(importlib.import_module(name).main([]) or 0))
    if args.only in (None, "view"):
        print("===== prostateai view (browser) =====", flush=True)
        status = max(status, bench_view())
    return status


if __name__ == "__main__":
    sys.exit(main())
