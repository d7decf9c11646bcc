"""Completeness checks of 1,000 cached steps: round trips and time, against one search call.

For each store (the embedded sqlite file and a real `mlflow server` on 127.0.0.1), N complete runs with
distinct cache keys are created (plus 10% FAILED and 10% "FINISHED but exit code 3" noise), then:

* one search:    a single search for one key (the unit a naive per-task check pays N times);
* mltf_flow:     RunIndex.find_complete for all N keys (per-process prefetch + dict lookups);
* naive:         the same with prefetch disabled (one search per step).

    python benchmarks/completeness_check.py [--runs 1000] [--no-server]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from mltf_flow.run_index import RestRunIndex, RunIndex, SqliteRunIndex

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
EXPERIMENT = "completeness-bench"


def seed(uri: str, n: int) -> list[str]:
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT)
    keys = []
    total = int(n * 1.2)
    for i in range(total):
        key = uuid.uuid4().hex * 2
        run = client.create_run(exp, tags={"mltf.cache_key": key})
        if i < n:
            client.log_batch(run.info.run_id, tags=[RunTag("mltf.complete", "true")])
            keys.append(key)
        # Noise: FAILED runs, and FINISHED runs without mltf.complete (a script that did sys.exit(3)).
        client.set_terminated(run.info.run_id, "FAILED" if i >= n and i % 2 else "FINISHED")
    return keys[: n]


def measure(make: type[RunIndex], uri: str, keys: list[str]) -> None:
    probe = make(uri, prefetch_limit=0)
    exp_id = probe.experiment_id(EXPERIMENT)
    assert exp_id is not None
    singles = []
    for key in keys[:25]:
        start = time.perf_counter()
        probe._search(exp_id, key=key, complete=True, max_results=1)
        singles.append(time.perf_counter() - start)
    one = statistics.median(singles)
    results = {}
    for label, limit in (("mltf_flow (prefetch)", 5000), ("naive (no prefetch)", 0)):
        index = make(uri, prefetch_limit=limit)
        start = time.perf_counter()
        found = sum(index.find_complete(EXPERIMENT, k) is not None for k in keys)
        elapsed = time.perf_counter() - start
        assert found == len(keys), f"{label}: found {found} of {len(keys)}"
        results[label] = (elapsed, index.round_trips)
    print(f"  one search call:        {one * 1000:8.1f} ms")
    for label, (elapsed, trips) in results.items():
        print(f"  {label:<22} {elapsed * 1000:8.1f} ms, {trips:5d} round trips, "
              f"{elapsed / one:6.1f}x one search")
    fast, slow = results["mltf_flow (prefetch)"][0], results["naive (no prefetch)"][0]
    print(f"  naive / mltf_flow: {slow / fast:.1f}x")


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/s.db",
         "--artifacts-destination", str(root / "art"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # readiness poll
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("mlflow server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        print(f"seeding {args.runs} complete runs (+20% noise) into sqlite ...", flush=True)
        keys = seed(uri, args.runs)
        print(f"sqlite store, {len(keys)} cached steps:")
        measure(SqliteRunIndex, uri, keys)
        if not args.no_server:
            proc, server = start_server(Path(tmp))
            try:
                print(f"seeding {args.runs} complete runs into mlflow server {server} ...", flush=True)
                keys = seed(server, args.runs)
                print(f"mlflow server (REST, --workers 1), {len(keys)} cached steps:")
                measure(RestRunIndex, server, keys)
            finally:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
