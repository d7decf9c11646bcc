"""Cost of a fully cached rerun of the example pipeline vs a bare `luigi --module` no-op task.

Both commands are measured back to back, interleaved, in this run (the machines are shared and noisy:
only the ratio means something). Goal: cached rerun <= 1.5x the bare Luigi invocation.

    python benchmarks/cached_rerun.py [--repeats 9] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_report import report
from timed_command import timed

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GOAL = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, str(REPO / "pipelines/jet_tagging/generate.py"), "--out-dir", str(data),
                        "--n-files", "2", "--events-per-file", "500"], check=True, capture_output=True)
        env = dict(os.environ, MLTF_FLOW_WORK_DIR=str(Path(tmp) / "work"),
                   LUIGI_CONFIG_PATH=str(REPO / "configs/luigi.cfg"),
                   PYTHONPATH=f"{REPO / 'benchmarks'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        common = ["--local-scheduler", "--no-lock", "--log-level", "WARNING"]
        pipeline = [str(BIN / "luigi"), "--module", "pipelines", "Train", "--dataset", str(data), "--epochs", "1",
                    *common]
        noop = [str(BIN / "luigi"), "--module", "noop_task", "Noop", *common]
        print("filling the cache (first run of the pipeline) ...", flush=True)
        first = timed(pipeline, env, REPO)
        timed(pipeline, env, REPO)  # warm the page cache for both commands
        timed(noop, env, REPO)
        cached, bare = [], []
        for _ in range(args.repeats):
            cached.append(timed(pipeline, env, REPO))
            bare.append(timed(noop, env, REPO))
    c, b = statistics.median(cached), statistics.median(bare)
    ratio = c / b
    print(f"first run (3 steps executed):       {first:7.2f} s")
    print(f"cached rerun of the pipeline:        {c * 1000:7.0f} ms (median of {args.repeats})")
    print(f"bare `luigi --module` no-op task:    {b * 1000:7.0f} ms (median of {args.repeats})")
    report("cached rerun of the example vs bare Luigi no-op", ratio, goal=GOAL, better="lower",
           detail=f"{c * 1000:.0f} ms vs {b * 1000:.0f} ms, median of {args.repeats}")


if __name__ == "__main__":
    main()
