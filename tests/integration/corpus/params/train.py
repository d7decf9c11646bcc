"""Typed parameters: the same values in other spellings are the same run."""

import argparse
import json
from pathlib import Path

SEED = 1

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--n", type=int, required=True)
parser.add_argument("--data", required=True)
parser.add_argument("--source", required=True)
args = parser.parse_args()
lines = Path(args.data).read_text().splitlines()
Path("received.json").write_text(json.dumps({**vars(args), "lines": len(lines), "seed": SEED}))
