"""Zone (PZ/TZ) Dice of zone models through the whole cascade (`pipeline.run`: the shipped gland model,
then the zone model on the gland's box), per case, against the cases' reference zone masks.

    python Utilities/zone_dice_table.py --model v1.0=prostate-zones-t2-demo --model new=runs/zones/model.pt \
        --case ProstateX-0000=../shared/data/prostatex/ProstateX-0000/t2w:../shared/data/prostatex/ProstateX-0000/masks/zones.nii.gz
"""

import argparse
import tempfile
from pathlib import Path

import SimpleITK as sitk

from ProstateAICore.imageio import read_image
from ProstateAILib import metrics, pipeline

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", action="append", required=True, help="NAME=catalog name or .pt, repeatable")
parser.add_argument("--case", action="append", required=True, help="NAME=T2:ZONES (1 = PZ, 2 = TZ), repeatable")
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

named = dict(item.split("=", 1) for item in args.model)
rows = []
with tempfile.TemporaryDirectory() as tmp:
    for item in args.case:
        case, paths = item.split("=", 1)
        t2, zones = paths.split(":")
        truth = sitk.GetArrayFromImage(read_image(zones))
        for name, model in named.items():
            out = Path(tmp) / f"{case}-{name}"
            pipeline.run(t2, out, zones_model=model, threads=args.threads, lesions=False)
            pred = sitk.GetArrayFromImage(read_image(out / "zones.nii.gz"))
            rows.append((case, name, metrics.dice(pred == 2, truth == 2), metrics.dice(pred == 1, truth == 1)))
            print(f"{case} {name}: TZ {rows[-1][2]:.3f} PZ {rows[-1][3]:.3f}", flush=True)
print("\n| case | model | TZ Dice | PZ Dice |\n|---|---|---|---|")
for case, name, tz, pz in rows:
    print(f"| {case} | {name} | {tz:.3f} | {pz:.3f} |")
