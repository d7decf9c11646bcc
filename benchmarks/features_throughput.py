"""Feature-extraction throughput on 1 vs 2 Dask workers (the example's `features` fan-out).

The same files are processed by the example's own `extract()` (one Dask task per ROOT file, results
merged in file order) on a LocalCluster with 1 and with 2 single-threaded worker processes, interleaved,
in this run. Goal: 2 workers >= 1.7x the throughput of 1. Also checks both give identical features.

    python benchmarks/features_throughput.py [--files 8] [--events 50000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL = 1.7


def load_features_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("jet_features", REPO / "pipelines/jet_tagging/features.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import os

    import numpy as np
    from distributed import LocalCluster

    features = load_features_module()
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp:
        subprocess.run([sys.executable, str(REPO / "pipelines/jet_tagging/generate.py"), "--out-dir", tmp,
                        "--n-files", str(args.files), "--events-per-file", str(args.events)], check=True,
                       capture_output=True)
        paths = sorted(str(p) for p in Path(tmp).glob("*.root"))
        clusters = {n: LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                    dashboard_address=None) for n in (1, 2)}
        try:
            times: dict[int, list[float]] = {1: [], 2: []}
            outputs = {}
            for n, cluster in clusters.items():  # warm-up: imports on the workers
                os.environ["DASK_SCHEDULER_ADDRESS"] = cluster.scheduler_address
                outputs[n] = features.extract(paths[:1], 1.0, 64)
            for _ in range(args.repeats):
                for n, cluster in clusters.items():
                    os.environ["DASK_SCHEDULER_ADDRESS"] = cluster.scheduler_address
                    start = time.perf_counter()
                    outputs[n] = features.extract(paths, 1.0, 64)
                    times[n].append(time.perf_counter() - start)
        finally:
            for cluster in clusters.values():
                cluster.close()
    same = all(np.array_equal(a[0], b[0]) for a, b in zip(outputs[1], outputs[2], strict=True))
    jets = args.files * args.events
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    print(f"{args.files} files, {jets} jets; identical features on 1 and 2 workers: {same}")
    print(f"1 worker:  {t1:6.2f} s  ({jets / t1:9.0f} jets/s)")
    print(f"2 workers: {t2:6.2f} s  ({jets / t2:9.0f} jets/s)")
    speedup = t1 / t2
    best = min(times[1]) / min(times[2])
    # On a shared 2-core machine the medians move with other load; the best-of ratio shows the capacity.
    print(f"speed-up 2 vs 1 workers: {speedup:.2f}x of medians, {best:.2f}x of best runs "
          f"(goal >= {GOAL}x) -> {'OK' if speedup >= GOAL else 'MISSED'}")


if __name__ == "__main__":
    main()
