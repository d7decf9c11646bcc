"""A user's project submitted through the gateway (tests/integration/test_gateway.py): it trains nothing, but
reports what its job saw: whether the user's secret reached it (as a hash), where its data came from, and,
for the test only, where the job's MLflow credential can be read back after the job (--note-to)."""

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import mlflow

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--data", default="none")
parser.add_argument("--note-to", default="none")
parser.add_argument("--prepare", type=int, default=0)
parser.add_argument("--gate", default="none")
args = parser.parse_args()

if args.gate != "none":  # the test cancels the job here, or opens the gate
    print("AT GATE", flush=True)
    while not os.path.exists(args.gate):
        time.sleep(0.05)

with mlflow.start_run():
    if args.prepare:
        Path("table.txt").write_text("\n".join(str(i) for i in range(args.prepare)) + "\n")
        mlflow.log_artifact("table.txt")
    else:
        secret = os.environ.get("WANDB_API_KEY", "")
        mlflow.set_tag("secret_sha256", hashlib.sha256(secret.encode()).hexdigest() if secret else "absent")
        data = Path(args.data)
        if data.suffix == ".json":  # a staged dataset's manifest (the gateway's Rucio staging)
            files = sorted(Path(f["path"]).name for f in json.loads(data.read_text())["files"])
        else:
            files = sorted(p.name for p in data.iterdir()) if data.is_dir() else [data.name]
        mlflow.set_tag("data_files", ",".join(files))
        mlflow.log_metric("loss", 1.0 / (1.0 + args.lr))
        if args.note_to != "none":  # the test reads the job's credential back to try it after the job ended
            Path(args.note_to).write_text(os.environ["MLFLOW_TRACKING_TOKEN"])
        Path("model.txt").write_text(f"lr={args.lr}\n")
        mlflow.log_artifact("model.txt")
print("done", flush=True)
