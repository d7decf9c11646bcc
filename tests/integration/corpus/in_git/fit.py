"""Writes untracked outputs into the project directory and rewrites a committed results file."""

import argparse
import json
import pickle
import time
from pathlib import Path

SEED = 1

parser = argparse.ArgumentParser()
parser.add_argument("--alpha", type=float, required=True)
args = parser.parse_args()
stamp = time.time_ns()
Path("out").mkdir(exist_ok=True)
Path("out/weights.pkl").write_bytes(pickle.dumps({"alpha": args.alpha, "seed": SEED, "stamp": stamp}))
Path("metrics.json").write_text(json.dumps({"score": args.alpha * 2, "stamp": stamp}))
Path("summary.yaml").write_text(f"alpha: {args.alpha}\nfinished_at: {stamp}\n")
Path("fit.log").write_text(f"fitted alpha={args.alpha} at {stamp}\n")
Path("results/latest.yaml").write_text(f"alpha: {args.alpha}\nscore: {args.alpha * 2}\nstamp: {stamp}\n")
