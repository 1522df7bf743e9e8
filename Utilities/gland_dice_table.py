"""Dice of gland models per case and per centre/dataset, on the deployment path.

    python Utilities/gland_dice_table.py --data Resources/Models/gland_all_dataset.json \
        --cases case00,case15,ProstateX-0000,picai_10000_1000000 \
        --model v1.2=Resources/Models/prostate-gland-t2.pt --model B=runs/gland_v2B/model.pt --json out.json

Each case is segmented as `prostateai segment` does it (the model's tuned layout, overlap and threshold,
flip TTA, largest component) on the case's grid; a dataset list's "spacing" (calibrated PROMISE12
voxel sizes) is applied first, as in training validation. Prints a Markdown table per case and the
mean per group, and the time per case.
"""

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import SimpleITK as sitk

from ProstateAICore.imageio import read_image, write_text
from ProstateAILib import dataset, inference, metrics, models

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data", required=True, help="dataset list (JSON) or folder")
parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
parser.add_argument("--model", action="append", required=True, help="NAME=PATH, repeatable")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--localiser", default=None,
                    help="also segment with this coarse localiser (catalog name or .pt): columns NAME+loc")
parser.add_argument("--json", default=None, help="write the table as JSON here")
args = parser.parse_args()

import torch  # noqa: E402

torch.set_num_threads(args.threads)
cases = dataset.discover_cases(args.data)
if args.cases:
    wanted = args.cases.split(",")
    cases = [c for c in cases if c.name in wanted]
    assert len(cases) == len(wanted), f"missing cases: {set(wanted) - {c.name for c in cases}}"
named = dict(item.split("=", 1) for item in args.model)
loaded = {name: models.load(path) for name, path in named.items()}
localiser = models.load(args.localiser) if args.localiser else None
runs = [(name, name, None) for name in loaded] + ([(f"{name}+loc", name, localiser) for name in loaded] if localiser else [])
rows, seconds = {}, defaultdict(list)
for case in cases:
    t2 = dataset.with_spacing(read_image(case.images[0]), case.spacing)
    truth = sitk.GetArrayViewFromImage(dataset.with_spacing(read_image(case.label), case.spacing)) > 0
    rows[case.name] = {"group": case.group or "all"}
    for column, name, located in runs:
        model, metadata = loaded[name]
        info = {}
        t0 = time.perf_counter()
        probs = inference.predict_probabilities(model, metadata, [t2], localiser=located, info=info)
        mask = inference.foreground_mask(probs[1], metadata.get("inference", {}).get("threshold", 0.5))
        seconds[column].append(time.perf_counter() - t0)
        rows[case.name][column] = metrics.dice(mask, truth)
        if located is not None:
            rows[case.name][column + " localisation"] = info
    print(case.name, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[case.name].items()}, flush=True)

names = [column for column, _, _ in runs]
print("\n| case | group | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names))
for case, row in rows.items():
    print(f"| {case} | {row['group']} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
groups = defaultdict(list)
for row in rows.values():
    groups[row["group"]].append(row)
print("\n| group | cases | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names))
summary = {}
for group, members in sorted(groups.items()):
    summary[group] = {n: float(np.mean([m[n] for m in members])) for n in names}
    print(f"| {group} | {len(members)} | " + " | ".join(f"{summary[group][n]:.3f}" for n in names) + " |")
print("\nseconds per case: " + ", ".join(f"{n} {np.mean(s):.1f}" for n, s in seconds.items()))
if args.json:
    write_text(json.dumps({"cases": rows, "groups": summary, "seconds": {n: float(np.mean(s)) for n, s in seconds.items()}},
                          indent=1), args.json)
