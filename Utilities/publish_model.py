"""Copy a trained run's model.pt into Resources/Models/ and record it in Resources/Models.json.

    python Utilities/publish_model.py runs/gland/model.pt --name prostate-gland-t2 --task gland --version 1.0
"""

import argparse
import json

from ProstateAILib import models

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model", help="a run's model.pt")
parser.add_argument("--name", required=True)
parser.add_argument("--task", required=True, choices=["gland", "zones", "localise", "lesions"])
parser.add_argument("--version", default="1.0")
parser.add_argument("--card", default=None, help="model card (Markdown), relative to Resources/")
parser.add_argument("--extra", default=None, help="JSON object merged into the entry (e.g. external test results)")
args = parser.parse_args()
entry = models.publish(args.model, args.name, args.version, args.task, card=args.card,
                       extra=json.loads(args.extra) if args.extra else None)
print(json.dumps({k: entry[k] for k in ("name", "file", "sha256", "size_bytes")}, indent=2))
