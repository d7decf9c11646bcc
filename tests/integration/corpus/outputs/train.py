"""Writes its outputs into the project directory, as many `mlflow run` users do."""

import argparse
import json
import pickle
import time
from pathlib import Path

SEED = 1

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, required=True)
args = parser.parse_args()
stamp = time.time_ns()  # every run writes different bytes
Path("out").mkdir(exist_ok=True)
Path("out/model.pkl").write_bytes(pickle.dumps({"weights": [SEED] * args.epochs, "stamp": stamp}))
Path("plot.png").write_bytes(b"\x89PNG\r\n\x1a\n" + str(stamp).encode())
Path("metrics.json").write_text(json.dumps({"loss": 1.0 / args.epochs, "stamp": stamp}))
Path("summary.yaml").write_text(f"epochs: {args.epochs}\nfinished_at: {stamp}\n")
with open("train.log", "a") as log:
    log.write(f"trained {args.epochs} epochs at {stamp}\n")
