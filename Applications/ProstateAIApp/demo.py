"""`make demo`: the main job on the bundled sample data, results and PNG previews in one folder.

Each module contributes a `demo.run(out_dir)` that works on the small sample case shipped in
Resources/SampleData; this entry point runs them in turn and prints where the results are.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

# (name, module path): each has run(out_dir) -> dict summary
DEMOS = (
    ("CT preprocessing", "CTPreprocessLib.demo"),
    ("MR standardisation (N4, Nyul, ADC -> T2 registration)", "MRStandardizeLib.demo"),
    ("Prostate segmentation (gland, PZ, TZ)", "ProstateAILib.demo"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ProstateAIApp.demo")
    parser.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for title, module_name in DEMOS:
        start = time.perf_counter()
        print(f"== {title} ==", flush=True)
        module = importlib.import_module(module_name)
        module.run(out / module_name.split("Lib.")[0].lower())
        print(f"   done in {time.perf_counter() - start:.1f} s", flush=True)
    print(f"Results and PNG previews are in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
