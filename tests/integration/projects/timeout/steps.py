"""Steps that outlive their welcome: ``hang`` never ends by itself, ``spawn`` exits leaving a child.

Both start a background ``sleep`` that is never waited for and write its pid to
``$MLTF_TEST_PIDS/<MLflow run id><RANK>.pid`` (RANK: a DDP rank's number, else empty), so a test can check
that nothing is left. (An ``MLTF_`` variable: it
reaches commands on Dask workers too.)
"""

import argparse
import os
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=["hang", "spawn"])
parser.add_argument("--code", type=int, default=0)
args = parser.parse_args()

child = subprocess.Popen(["sleep", "1000"])
target = os.path.join(os.environ["MLTF_TEST_PIDS"], os.environ["MLFLOW_RUN_ID"] + os.environ.get("RANK", "") + ".pid")
with open(target + ".tmp", "w") as handle:
    handle.write(str(child.pid))
os.replace(target + ".tmp", target)
print("READY", flush=True)
if args.mode == "hang":
    while True:
        time.sleep(3600)  # stopped by the step's timeout
print(f"leaving child {child.pid} behind, exit code {args.code}", file=sys.stderr, flush=True)
sys.exit(args.code)
