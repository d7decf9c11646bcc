"""The two steps of the scheduled pipeline (tests/integration/test_schedule.py).

STEP_GATE=<path> (an environment variable, not a parameter: the key stays the same) holds a step at
"AT GATE <step>" until the file exists, so a test can act while the step runs (or kill it there).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow

parser = argparse.ArgumentParser()
parser.add_argument("step")
parser.add_argument("--manifest")
parser.add_argument("--features")
parser.add_argument("--mode", default="ok")
args = parser.parse_args()

with mlflow.start_run():
    gate = os.environ.get("STEP_GATE", "")
    if gate:
        print(f"AT GATE {args.step}", flush=True)
        while not os.path.exists(gate):
            time.sleep(0.05)  # the test creates the file
    with tempfile.TemporaryDirectory() as tmp:
        if args.step == "features":
            files = json.loads(Path(args.manifest).read_text())["files"]
            out = Path(tmp) / "features.txt"
            out.write_text(f"{len(files)}\n")
            mlflow.log_metric("files", len(files))
        else:
            if args.mode == "fail":
                print("training diverged: loss is nan at epoch 3", file=sys.stderr)
                sys.exit(4)
            count = int(Path(args.features).read_text())
            out = Path(tmp) / "model.txt"
            out.write_text(f"model trained on {count} files\n")
            mlflow.log_metric("files_seen", count)
        mlflow.log_artifact(str(out))
print(f"{args.step} done")
