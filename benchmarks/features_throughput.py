"""Feature-extraction throughput on 1 vs 2 Dask workers (the example's `features` fan-out).

The same files are processed by the example's own `extract()` (one Dask task per ROOT file, results
merged in file order) on a LocalCluster with 1 and with 2 single-threaded worker processes, interleaved,
in this run, and serially in this plain process. The clusters get the workers' environment mltf_flow's own
clusters get (mltf_flow.clusters.worker_env); the same pair with Dask's default worker environment is
measured alongside (the figure before that change). Goal: 2 workers >= 1.8x the throughput of 1. Also
checks that every variant gives the features of the plain process.

    python benchmarks/features_throughput.py [--files 8] [--events 50000] [--repeats 5] [--quick]
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
GOAL = 1.8


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
    # Fewer files would leave each worker one or two and measure the fixed cost of a call more than scaling.
    parser.add_argument("--quick", action="store_true", help="3 repeats (same 8 files)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    import os

    import dask
    import numpy as np
    from bench_report import report
    from distributed import LocalCluster

    from mltf_flow.clusters.dashboard import local_cluster_options
    from mltf_flow.clusters.worker_env import dask_config

    features = load_features_module()
    # Each variant's nannies read the worker environment from the config in force when they are made.
    variants = {"mltf_flow": dask_config(), "Dask defaults": {}}
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp:
        subprocess.run([sys.executable, str(REPO / "pipelines/jet_tagging/generate.py"), "--out-dir", tmp,
                        "--n-files", str(args.files), "--events-per-file", str(args.events)], check=True,
                       capture_output=True)
        paths = sorted(str(p) for p in Path(tmp).glob("*.root"))
        clusters: dict[tuple[str, int], LocalCluster] = {}
        times: dict[tuple[str, int], list[float]] = {}
        outputs = {}
        plain: list[float] = []
        try:
            for variant, config in variants.items():
                with dask.config.set(config):
                    for n in (1, 2):
                        clusters[variant, n] = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                            host="127.0.0.1", **local_cluster_options(None))
                        times[variant, n] = []
            # Warm-up, unmeasured: one whole pass on every cluster (and here), so that each worker has imported
            # uproot/awkward and its allocator has grown to the sizes of this work (glibc adapts its mmap
            # threshold over the first large frees: until then each big array is a fresh, page-faulted mapping).
            for key, cluster in clusters.items():
                os.environ["DASK_SCHEDULER_ADDRESS"] = cluster.scheduler_address
                outputs[key] = features.extract(paths, 1.0, 64)
            os.environ.pop("DASK_SCHEDULER_ADDRESS")
            features.extract(paths, 1.0, 64)
            for _ in range(args.repeats):
                for key, cluster in clusters.items():
                    os.environ["DASK_SCHEDULER_ADDRESS"] = cluster.scheduler_address
                    start = time.perf_counter()
                    outputs[key] = features.extract(paths, 1.0, 64)
                    times[key].append(time.perf_counter() - start)
                os.environ.pop("DASK_SCHEDULER_ADDRESS")
                start = time.perf_counter()
                expected = features.extract(paths, 1.0, 64)  # the same files in this plain process
                plain.append(time.perf_counter() - start)
        finally:
            for cluster in clusters.values():
                cluster.close()
    same = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for got in outputs.values() for a, b in zip(got, expected, strict=True))
    jets = args.files * args.events
    median = {key: statistics.median(t) for key, t in times.items()}
    tp = statistics.median(plain)
    print(f"{args.files} files, {jets} jets; identical features in every variant and in a plain process: {same}")
    print(f"plain process, serial:           {tp:6.2f} s  ({jets / tp:9.0f} jets/s)")
    for (variant, n), t in median.items():
        print(f"{variant + ',':15s} {n} worker{'s' if n > 1 else ' '}:   {t:6.2f} s  ({jets / t:9.0f} jets/s)  "
              f"speed-up {median[variant, 1] / t:.2f}x")
    speedup = median["mltf_flow", 1] / median["mltf_flow", 2]
    before = median["Dask defaults", 1] / median["Dask defaults", 2]
    best = min(times["mltf_flow", 1]) / min(times["mltf_flow", 2])
    if not same:
        print("FAILED: the variants gave different features")
        sys.exit(1)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) and Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1":
        # With autogroup the kernel shares the CPUs between sessions, not processes: this run's workers (one
        # session) get one session's share however many they are, so 2 workers cannot beat 1 under such load.
        print(f"NOTE: load {load:.1f} on {os.cpu_count()} CPUs with sched_autogroup on: the speed-up is bounded by "
              "this session's share of the CPUs, not by the workers")
    report("feature extraction, 2 workers vs 1", speedup, goal=GOAL, better="higher",
           detail=f"load {load:.1f}; {median['mltf_flow', 1]:.2f} s vs {median['mltf_flow', 2]:.2f} s, "
                  f"median of {args.repeats} "
                  f"(best runs {best:.2f}x); Dask's default worker env {before:.2f}x; 1 worker / plain process "
                  f"{median['mltf_flow', 1] / tp:.2f}x (Dask defaults {median['Dask defaults', 1] / tp:.2f}x); "
                  f"{args.files} files x {args.events} jets")

if __name__ == "__main__":
    main()
