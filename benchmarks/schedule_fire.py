"""Cost of a schedule's fire with nothing to do vs a cached rerun of the same pipeline (`mltf-flow run`).

A fire does what the cached rerun does, plus its own record: the fire's parent run (created, tagged, ended),
the look for an earlier fire still running, and (on SLURM) submitting the next fire. Both commands are
measured back to back, interleaved, in this run, against a real `mlflow server` (a facility's tracking store;
on the embedded sqlite store the fire's record costs MLflow's import, ~2 s, and the goal is not for it).
Goal: a fire with nothing to do <= 2x a cached rerun.

    python benchmarks/schedule_fire.py [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench_report import report
from completeness_check import start_server  # the same `mlflow server` start (benchmarks/ is on sys.path)
from timed_command import timed

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROJECT = REPO / "tests" / "integration" / "projects" / "scheduled"
GOAL = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp_name:
        tmp = Path(tmp_name)
        project = tmp / "project"
        shutil.copytree(PROJECT, project)
        data = tmp / "data"
        data.mkdir()
        (data / "a.root").write_bytes(os.urandom(1024))
        server, uri = start_server(tmp)
        try:
            env = dict(os.environ, MLTF_FLOW_WORK_DIR=str(tmp / "work"), MLTF_FLOW_TRACKING_URI=uri,
                       MLTF_FLOW_ENV_MANAGER="local", XDG_CACHE_HOME=str(tmp / "cache"),
                       PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
            target = [str(project), "--step", "train", "-P", f"stage.dataset={data}"]
            run = [str(BIN / "mltf-flow"), "run", *target]
            fire = [str(BIN / "mltf-flow"), "schedule", "fire", "bench"]
            timed([str(BIN / "mltf-flow"), "schedule", "add", "bench", "--every", "1h", "--via", "none", *target],
                  env, tmp)
            print("filling the cache (first run of the pipeline) ...", flush=True)
            first = timed(run, env, tmp)
            timed(fire, env, tmp)  # warm both paths
            timed(run, env, tmp)
            cached, fires = [], []
            for _ in range(args.repeats):
                cached.append(timed(run, env, tmp))
                fires.append(timed(fire, env, tmp))
        finally:
            server.terminate()
            server.wait(timeout=20)
    c, f = statistics.median(cached), statistics.median(fires)
    ratio = f / c
    print(f"first run (2 steps executed):          {first:7.2f} s")
    print(f"cached rerun (`mltf-flow run`):         {c * 1000:7.0f} ms (median of {args.repeats})")
    print(f"fire with nothing to do:               {f * 1000:7.0f} ms (median of {args.repeats})")
    report("schedule fire with nothing to do vs cached rerun", ratio, goal=GOAL, better="lower",
           detail=f"{f * 1000:.0f} ms vs {c * 1000:.0f} ms, median of {args.repeats}, against an mlflow server")


if __name__ == "__main__":
    main()
