"""Fill the cache of a large DAG for dag_scale.py without starting N commands.

Each step goes through the step contract of :mod:`mltf_flow.step_run` exactly as ``execute()`` does (plan,
open the run with its lineage tags under the invocation's parent, settle it complete with exit code 0),
except that the command itself (``true``, which does nothing) is not started: starting 1,000 of them costs
~2 s each. Steps are settled in dependency order, so each key is computed from its upstream runs as a real
run would.

    python benchmarks/dag_scale_fill.py fan N            # dag_scale_tasks.Fan(n=N) and its N leaves
    python benchmarks/dag_scale_fill.py chain PROJECT STEP
"""

from __future__ import annotations

import sys
import time
from typing import Any

import luigi

from mltf_flow.invocation import new_invocation
from mltf_flow.run_guard import run_guard
from mltf_flow.run_index import RunRef, run_index
from mltf_flow.step import MLflowStep
from mltf_flow.step_run import Cluster, open_run, plan
from mltf_flow.tracking import Tracker


def dependency_order(root: luigi.Task) -> list[MLflowStep]:
    """Every MLflowStep of the tree, each after those it requires (iterative: chains are deep)."""
    order: list[MLflowStep] = []
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
        stack.extend((dep, False) for dep in luigi.task.flatten(task.requires()) if isinstance(dep, MLflowStep))
    return order


def settle_complete(task: MLflowStep) -> None:
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


def main() -> None:
    new_invocation()
    if sys.argv[1] == "fan":
        from dag_scale_tasks import Fan

        root: luigi.Task = Fan(n=int(sys.argv[2]))
    else:
        from mltf_flow.pipeline import make_task

        root = make_task(sys.argv[2], sys.argv[3], {})
    for task in dependency_order(root):
        settle_complete(task)


if __name__ == "__main__":
    main()
