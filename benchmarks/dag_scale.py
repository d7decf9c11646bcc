"""Cached reruns of large DAGs vs bare Luigi with the same number of complete tasks.

Two shapes, each at 10 / 100 / 1,000 steps, of a trivial entry point in a project in a temporary directory
(sqlite store in a temporary work dir):

* fan-out: a Python ``MLflowStep`` requiring N ``MLflowStep`` tasks (benchmarks/dag_scale_tasks.py), against
  a ``luigi.WrapperTask`` requiring N complete ``luigi.Task``;
* chain: a ``pipeline.yaml`` of N steps, each requiring the previous, run as ``luigi --module
  mltf_flow.pipeline PipelineStep``, against a chain of N ``luigi.Task`` whose root checks every link.

The cache is filled once per shape and size by ``dag_scale.py --fill`` (a process of its own): every step
goes through the step contract of mltf_flow.step_run (key, run with its lineage tags under the invocation's
parent, settled complete) except that its command, ``true``, is not started (~2 s each with 1,000 of
them). Then the cached rerun and its baseline are timed interleaved, medians of several repeats; the store
must hold the same runs afterwards (nothing ran again). ``mltf-flow status`` on the largest chain must work too.
Goal: cached rerun <= 1.5x bare Luigi at 1,000 steps (the smaller sizes are printed as detail).

    python benchmarks/dag_scale.py [--quick] [--sizes 10,100,1000] [--repeats 5]

Filling takes ~6 minutes per 1,000 steps on the 2-core machines; ``--quick`` measures 10 and 100 steps.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_report import report
from timed_command import timed

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GOAL = 1.5
MLPROJECT = """name: dagscale
entry_points:
  noop:
    parameters:
      i: {type: int, default: 0}
    command: "true"
"""
COMMON = ["--local-scheduler", "--no-lock", "--log-level", "WARNING"]


def write_project(root: Path, chain: int | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "MLproject").write_text(MLPROJECT)
    if chain is not None:
        lines = ["name: dagscale-chain", "steps:"]
        for k in range(chain):
            lines.append(f"  s{k:04d}:")
            lines.append("    entry_point: noop")
            if k:
                lines.append(f"    requires: [s{k - 1:04d}]")
        (root / "pipeline.yaml").write_text("\n".join(lines) + "\n")
    return root


def run_count(work: Path) -> int:
    with sqlite3.connect(work / "mlflow.db") as db:
        return int(db.execute("select count(*) from runs").fetchone()[0])


def dependency_order(root: Any) -> list[Any]:
    """Every MLflowStep of the tree, each after those it requires (iterative: chains are deep)."""
    from luigi.task import flatten

    from mltf_flow.step import MLflowStep

    order: list[Any] = []
    seen: set[str] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        task, expanded = stack.pop()
        if expanded:
            order.append(task)
            continue
        if task.task_id in seen:
            continue
        seen.add(task.task_id)
        stack.append((task, True))
        stack.extend((dep, False) for dep in flatten(task.requires()) if isinstance(dep, MLflowStep))
    return order


def settle_complete(task: Any) -> None:
    """execute() of mltf_flow.step_run without starting the command: exit code 0, nothing to verify."""
    from mltf_flow.run_guard import run_guard
    from mltf_flow.run_index import RunRef, run_index
    from mltf_flow.step_run import Cluster, open_run, plan
    from mltf_flow.tracking import Tracker

    value = task.describe()
    assert value is not None, f"{task}: an upstream run is missing"
    settings = task.settings()
    planned = plan(value, task.requirements(), settings, task.task_id)
    tracker = Tracker(settings)
    run = open_run(planned, Cluster(value.profile, "", None, "", ()), tracker, task)
    assert run is not None
    with run_guard(tracker, run.run_id, parent_id=run.parent_id, step=value.name) as guard:
        guard.end(ok=True, exit_code=0)
    run_index(settings.tracking_uri, settings.prefetch_limit).remember(
        run.experiment_id, RunRef(run.run_id, "FINISHED", value.key, int(time.time() * 1000)))


def fill(shape: str, n: int, project: Path) -> None:
    """Fill the cache of one DAG without starting its N commands (see the module docstring)."""
    from mltf_flow.invocation import new_invocation

    new_invocation()
    if shape == "fan-out":
        from dag_scale_tasks import Fan

        root: Any = Fan(n=n)
    else:
        from mltf_flow.pipeline import make_task

        root = make_task(str(project), f"s{n - 1:04d}", {})
    for task in dependency_order(root):
        settle_complete(task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 10 and 100, 3 repeats (filling 1,000 steps "
                        "takes minutes)")
    parser.add_argument("--sizes", default=None, help="comma list of step counts (default 10,100,1000)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dir", type=Path, default=None,
                        help="keep the projects and filled stores here and reuse them in later runs (default: a "
                             "temporary directory); a size and shape whose store holds runs is not filled again")
    parser.add_argument("--fill", nargs=3, metavar=("SHAPE", "N", "PROJECT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:  # the filling run, in a process of its own (dag_scale.py runs it)
        fill(args.fill[0], int(args.fill[1]), Path(args.fill[2]))
        return
    sizes = [int(s) for s in (args.sizes or ("10,100" if args.quick else "10,100,1000")).split(",")]
    repeats = args.repeats or (3 if args.quick else 5)
    largest = max(sizes)
    results: dict[tuple[str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mltf-dagscale-") as scratch:
        tmp = str(args.dir or scratch)
        # Byte code cached (in the temporary directory) as in any installed environment, for both commands:
        # PYTHONDONTWRITEBYTECODE=1 would have every run compile luigi and mltf_flow again.
        base = dict(os.environ, LUIGI_CONFIG_PATH=str(REPO / "configs/luigi.cfg"), MLTF_FLOW_ENV_MANAGER="local",
                    PYTHONPATH=f"{REPO / 'benchmarks'}{os.pathsep}{REPO}{os.pathsep}"
                               f"{os.environ.get('PYTHONPATH', '')}",
                    PYTHONPYCACHEPREFIX=str(Path(scratch) / "pycache"))
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        for n in sizes:
            for shape in ("fan-out", "chain"):
                root = Path(tmp) / f"{shape}-{n}"
                work = root / "work"
                filled = (work / "mlflow.db").is_file() and run_count(work) > n
                project = root / "project"
                if not filled:
                    write_project(project, n if shape == "chain" else None)
                env = dict(base, MLTF_FLOW_WORK_DIR=str(work), MLTF_BENCH_PROJECT=str(project))
                if shape == "fan-out":
                    ours = [str(BIN / "luigi"), "--module", "dag_scale_tasks", "Fan", "--n", str(n), *COMMON]
                    bare = [str(BIN / "luigi"), "--module", "dag_scale_tasks", "BareFan", "--n", str(n), *COMMON]
                else:
                    ours = [str(BIN / "luigi"), "--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir",
                            str(project), "--run-step", f"s{n - 1:04d}", *COMMON]
                    bare = [str(BIN / "luigi"), "--module", "dag_scale_tasks", "BareChain", "--i", str(n - 1),
                            *COMMON]
                fill_cmd = [sys.executable, __file__, "--fill", shape, str(n), str(project)]
                if not filled:
                    print(f"{shape} {n}: filling the cache ({n + (shape == 'fan-out')} steps) ...", flush=True)
                    filling = timed(fill_cmd, env, REPO)
                    print(f"  filled in {filling:.1f} s ({run_count(work)} runs)", flush=True)
                else:
                    print(f"{shape} {n}: reusing the filled cache in {root}", flush=True)
                runs = run_count(work)
                timed(ours, env, REPO)
                timed(bare, env, REPO)
                cached, plain = [], []
                for _ in range(repeats):
                    cached.append(timed(ours, env, REPO))
                    plain.append(timed(bare, env, REPO))
                if run_count(work) != runs:
                    raise SystemExit(f"{shape} {n}: the cached reruns ran steps again")
                c, b = statistics.median(cached), statistics.median(plain)
                results[shape, n] = (c, b)
                print(f"  cached rerun {c * 1000:7.0f} ms, bare Luigi {b * 1000:7.0f} ms: {c / b:.2f}x", flush=True)
                if shape == "chain" and n == largest:
                    status = [str(BIN / "mltf-flow"), "status", str(project), "--step", f"s{n - 1:04d}"]
                    took = timed(status, env, REPO)
                    print(f"  mltf-flow status on the {n}-step chain: {took:.2f} s", flush=True)
    load = os.getloadavg()
    for shape in ("fan-out", "chain"):
        c, b = results[shape, largest]
        detail = "; ".join(f"{n}: {results[shape, n][0] * 1000:.0f} vs {results[shape, n][1] * 1000:.0f} ms "
                           f"({results[shape, n][0] / results[shape, n][1]:.2f}x)" for n in sizes)
        report(f"cached rerun, {largest}-step {shape} vs bare Luigi", c / b, goal=GOAL, better="lower",
               detail=f"{detail}; median of {repeats}; load {load[0]:.1f}")


if __name__ == "__main__":
    main()
