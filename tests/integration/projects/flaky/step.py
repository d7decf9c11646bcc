"""A step whose failure mode is chosen by --mode: how real training scripts end badly."""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow

parser = argparse.ArgumentParser()
parser.add_argument("--mode", default="ok")
parser.add_argument("--api-token", default="none")
args = parser.parse_args()

# FLAKY_PAUSE (not a parameter: the step's key stays the same) stops the script at a phase, printing
# "PAUSED <phase>", so a test can kill the pipeline exactly there.
PAUSE = os.environ.get("FLAKY_PAUSE", "")


def pause(phase: str) -> None:
    if phase == PAUSE:
        print(f"PAUSED {phase}", flush=True)
        time.sleep(600)  # killed by the test


# FLAKY_GATE=<path> (not a parameter either): print "AT GATE" and go on once the file exists, so a test can
# hold a step running while it starts a second invocation, then let it finish.
GATE = os.environ.get("FLAKY_GATE", "")

with mlflow.start_run():
    mlflow.log_metric("started", 1.0)
    pause("running")
    if GATE:
        print("AT GATE", flush=True)
        while not os.path.exists(GATE):
            time.sleep(0.05)  # the test creates the file
    if args.mode == "exit3":
        print("boom: calibration file missing", file=sys.stderr)
        sys.exit(3)  # MLflow still ends this run FINISHED; mltf_flow must not call it complete
    if args.mode == "selffail":  # the script judges its own run failed, yet exits 0
        mlflow.end_run(status="FAILED")
        sys.exit(0)
    if args.mode == "raise":
        raise RuntimeError("kaboom in user code")
    if args.mode == "hang":
        print("READY", flush=True)
        time.sleep(600)
    if args.mode != "nooutput":
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.txt"
            out.write_text("ok\n")
            mlflow.log_artifact(str(out))
    print("done")
pause("ended")  # MLflow has ended the run FINISHED; mltf_flow has not verified it yet
