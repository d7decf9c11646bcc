"""Steps that prove things about how they were run.

left/right: each leaves a marker and waits for the other's: both finish only if they run at the same time.
gate: waits until a file appears (lets a test look at a running step). Every step also runs a task on
the Dask cluster of its profile through DASK_SCHEDULER_ADDRESS, as user code would.
"""

import argparse
import os
import time
from pathlib import Path

import mlflow
from distributed import Client

parser = argparse.ArgumentParser()
parser.add_argument("--me")
parser.add_argument("--peer")
parser.add_argument("--rendezvous")
parser.add_argument("--gate-file")
args = parser.parse_args()

with Client(os.environ["DASK_SCHEDULER_ADDRESS"], set_as_default=False) as client:
    assert client.submit(sum, [1, 2], pure=False).result(timeout=60) == 3
print(f"{args.me}: Dask task done on {os.environ['DASK_SCHEDULER_ADDRESS']}", flush=True)

deadline = time.monotonic() + 120
if args.rendezvous:
    Path(args.rendezvous, args.me).touch()
    while not Path(args.rendezvous, args.peer).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{args.me}: {args.peer} never started: the branches did not run in parallel")
        time.sleep(0.1)
if args.gate_file:
    # Longer: a test may keep the gate shut while several tests knock at its cluster (test_security.py).
    deadline = time.monotonic() + 300
    print("gate: waiting", flush=True)
    while not Path(args.gate_file).exists():
        if time.monotonic() > deadline:
            raise SystemExit("gate: the test never opened the gate")
        time.sleep(0.1)
with mlflow.start_run():
    mlflow.log_metric("done", 1.0)
print(f"{args.me}: done", flush=True)
