"""Step dispatch overhead: Luigi tasks that each run one trivial Dask task through mltf_flow's cluster
session (profile -> cluster address -> per-process client -> submit) vs raw ``client.submit`` on the
same LocalCluster, measured back to back in this run. Also prints the cost of one full MLflowStep with
a trivial entry point (MLflow run bookkeeping + launching a process), for scale. Goal: at most 15 ms per
step over a raw ``client.submit`` (Luigi's own scheduling of a task is ~1-3 ms of it).

    python benchmarks/dispatch_overhead.py [--tasks 200] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import luigi
from bench_report import report

from mltf_flow.clusters import session
from mltf_flow.clusters.profiles import get_profile

GOAL_MS = 15.0


def inc(x: int) -> int:
    return x + 1


class DaskTouch(luigi.Task):
    """A Luigi step whose whole work is one trivial Dask task on the pipeline's cluster."""

    i: int = luigi.IntParameter()
    tag: str = luigi.Parameter()

    def run(self) -> None:
        client = session.client_for(get_profile("local"))
        assert client.submit(inc, self.i, pure=False).result() == self.i + 1
        self._done = True

    def complete(self) -> bool:
        return getattr(self, "_done", False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 tasks, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.tasks = 100
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp:
        os.environ["MLTF_FLOW_WORK_DIR"] = str(Path(tmp) / "work")
        session.mark_main_process()
        client = session.client_for(get_profile("local"))
        client.wait_for_workers(1)
        raw, mltf = [], []
        for rep in range(args.repeats):
            start = time.perf_counter()
            for i in range(args.tasks):
                client.submit(inc, i, pure=False).result()
            raw.append((time.perf_counter() - start) / args.tasks)
            tasks = [DaskTouch(i=i, tag=f"r{rep}") for i in range(args.tasks)]
            start = time.perf_counter()
            ok = luigi.build(tasks, local_scheduler=True, workers=1, log_level="WARNING")
            mltf.append((time.perf_counter() - start) / args.tasks)
            assert ok
        full = full_step(Path(tmp))
        session.close_all()
    r, m = statistics.median(raw), statistics.median(mltf)
    print(f"raw client.submit(...).result():          {r * 1000:7.2f} ms per task "
          f"(median of {args.repeats} x {args.tasks})")
    print(f"Luigi step -> mltf_flow session -> submit: {m * 1000:7.2f} ms per task")
    print(f"ratio: {m / r:.2f}x; overhead {1000 * (m - r):.2f} ms per step (Luigi scheduling + client lookup)")
    print(f"one full MLflowStep with a trivial entry point (MLflow run + process launch): {full:.2f} s")
    report("dispatch overhead per step over client.submit", 1000 * (m - r), goal=GOAL_MS, better="lower", unit=" ms",
           detail=f"{m * 1000:.2f} ms vs {r * 1000:.2f} ms per task ({m / r:.2f}x), median of {args.repeats} x "
                  f"{args.tasks}; one full MLflowStep {full:.2f} s")


def full_step(tmp: Path) -> float:
    from mltf_flow.invocation import new_invocation
    from mltf_flow.pipeline import make_task

    project = tmp / "trivial"
    project.mkdir()
    (project / "MLproject").write_text(
        "name: trivial\nentry_points:\n  main:\n    parameters: {i: {type: int, default: 0}}\n"
        f"    command: \"{sys.executable} -c 'print({{i}})'\"\n"
    )
    times = []
    for i in range(3):
        new_invocation()
        task = make_task(str(project), "main", {"i": i})
        start = time.perf_counter()
        assert luigi.build([task], local_scheduler=True, workers=1, log_level="WARNING")
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


if __name__ == "__main__":
    main()
