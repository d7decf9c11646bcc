"""Completeness checks of 1,000 cached steps: round trips and time, against one search call.

For each store (the embedded sqlite file and a real `mlflow server` on 127.0.0.1), N complete runs with
distinct cache keys are created (plus 10% FAILED and 10% "FINISHED but exit code 3" noise), then, each in a
fresh index (the experiment lookup included) and interleaved, medians of several repeats:

* one search:      a single search for one key (the unit a naive per-task check pays N times);
* mltf_flow:       find_complete for all N keys, the first one prefetching the experiment's complete runs
                   (what a Luigi run of N cached steps does);
* naive:           the same with prefetch disabled (one search per step; once, it is slow).

The goal (issue 16): the N-step check costs at most 3x one search, on both stores. Reported through
bench_report for each store.

    python benchmarks/completeness_check.py [--runs 1000] [--repeats 5] [--no-server] [--quick]
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

from bench_report import report

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


def _timed(make: type[RunIndex], uri: str, keys: list[str], *, limit: int = 5000) -> tuple[float, int]:
    index = make(uri, prefetch_limit=limit)
    start = time.perf_counter()
    found = sum(index.find_complete(EXPERIMENT, k) is not None for k in keys)
    elapsed = time.perf_counter() - start
    assert found == len(keys), f"found {found} of {len(keys)}"
    return elapsed, index.round_trips


def measure(make: type[RunIndex], uri: str, keys: list[str], store: str, repeats: int) -> None:
    probe = make(uri, prefetch_limit=0)
    exp_id = probe.experiment_id(EXPERIMENT)
    assert exp_id is not None
    make(uri).experiment_id(EXPERIMENT)  # warm the server's (or the page cache's) first query of the experiment
    singles: list[float] = []
    checks: list[float] = []
    trips = 0
    for _ in range(repeats):  # interleaved: machine noise hits every variant alike
        for key in keys[:5]:
            start = time.perf_counter()
            probe._search(exp_id, key=key, complete=True, max_results=1)
            singles.append(time.perf_counter() - start)
        elapsed, trips = _timed(make, uri, keys)
        checks.append(elapsed)
    naive, naive_trips = _timed(make, uri, keys, limit=0)
    one, fast = statistics.median(singles), statistics.median(checks)
    print(f"  one search call:        {one * 1000:8.1f} ms (median of {len(singles)})")
    for label, value, n in (("mltf_flow", fast, trips), ("naive (once)", naive, naive_trips)):
        print(f"  {label:<22} {value * 1000:8.1f} ms, {n:5d} round trips, {value / one:6.1f}x one search")
    report(f"completeness check of {len(keys)} cached steps vs one search ({store})", fast / one, goal=3.0,
           better="lower", detail=f"{fast * 1000:.1f} ms vs {one * 1000:.1f} ms, {trips} round trips, median of "
           f"{repeats}; load {os.getloadavg()[0]:.1f}")


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-server", action="store_true")
    parser.add_argument("--quick", action="store_true", help="300 runs, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.repeats = 300, 3
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        print(f"seeding {args.runs} complete runs (+20% noise) into sqlite ...", flush=True)
        keys = seed(uri, args.runs)
        print(f"sqlite store, {len(keys)} cached steps:")
        measure(SqliteRunIndex, uri, keys, "sqlite store", args.repeats)
        if not args.no_server:
            proc, server = start_server(Path(tmp))
            try:
                print(f"seeding {args.runs} complete runs into mlflow server {server} ...", flush=True)
                keys = seed(server, args.runs)
                print(f"mlflow server (REST, --workers 1), {len(keys)} cached steps:")
                measure(RestRunIndex, server, keys, "mlflow server", args.repeats)
            finally:
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
