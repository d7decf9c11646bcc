"""``make bench``: run every benchmark script in benchmarks/ and print one summary table of ratio vs goal.

Each benchmark runs in its own process (``benchmarks/`` and the repository first on ``PYTHONPATH``; with
``--quick``, the script's own ``--quick``), and the table is built from the ``BENCH {json}`` lines it prints
through :func:`bench_report.report`; nothing else of its output is parsed (it is shown as it runs, unless
``--quiet``). A script whose needs are missing here (a SLURM that answers ``sinfo``, an NVIDIA GPU) gets a
"skipped: why" row; one that prints no ``BENCH`` line, or exits non-zero although every goal it reported
was met, a "failed" row. Exit code 1 if a goal was missed or a script failed.

Which files are benchmarks is written down below (:data:`BENCHMARKS`), next to the files that are not
(:data:`NOT_BENCHMARKS`: modules the benchmarks import or start). A file in benchmarks/ in neither list
is a "failed: not listed" row, so a new script cannot be forgotten silently.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = "BENCH "  # bench_report.PREFIX (not imported: this runner must not depend on what it runs)


def _answers(cmd: list[str]) -> str:
    """Empty when ``cmd`` runs and exits 0 within 20 s; else why not."""
    if shutil.which(cmd[0]) is None:
        return f"no {cmd[0]} on PATH"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` did not answer within 20 s"
    if proc.returncode != 0:
        return f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ''}"
    return ""


#: What a benchmark may need, and how to tell whether it is here ("" = here; else why not).
NEEDS: dict[str, Callable[[], str]] = {
    "slurm": lambda: _answers(["sinfo", "-h"]),
    "gpu": lambda: _answers(["nvidia-smi", "-L"]),
}


@dataclass(frozen=True)
class Benchmark:
    script: str
    needs: tuple[str, ...] = ()
    #: Arguments for ``make bench QUICK=1``: every benchmark takes ``--quick`` (fewer repeats and sizes).
    quick: tuple[str, ...] = ("--quick",)
    args: tuple[str, ...] = field(default=())


#: Every benchmark script, in the order they run (cheap ones first).
BENCHMARKS = (
    Benchmark("cached_rerun.py"),
    Benchmark("dispatch_overhead.py"),
    Benchmark("completeness_check.py"),
    Benchmark("dag_scale.py"),
    Benchmark("features_throughput.py"),
    Benchmark("peer_multistep.py"),
    Benchmark("schedule_fire.py"),
    Benchmark("ddp_throughput.py"),
    # 1,000 trials each way (the figure; --quick: 100): the longest of the local ones.
    Benchmark("hpo_overhead.py"),
    Benchmark("gds_read.py"),
    Benchmark("slurm_worker_start.py", needs=("slurm",)),
    Benchmark("backend_jobs.py", needs=("slurm",)),
    # GPU-only: the NCCL DDP and GDS-onto-GPU checks (gpu_check.sh runs both and gds_gpu_check.py).
    Benchmark("gpu_check.sh", needs=("gpu",), quick=()),
)

#: Files in benchmarks/ that are not benchmarks: helpers the benchmarks import or start, and this runner.
NOT_BENCHMARKS = {
    "run_all.py": "this runner",
    "bench_report.py": "report(): the BENCH line every benchmark prints",
    "timed_command.py": "timed(): one command's wall time, for the process-level benchmarks",
    "noop_task.py": "the bare Luigi task of cached_rerun.py",
    "ddp_train_bench.py": "the training script ddp_throughput.py launches",
    "dag_scale_tasks.py": "the task shapes dag_scale.py times",
    "gds_gpu_check.py": "run by gpu_check.sh (gds section)",
    "gpu_fsdp_check.py": "a GPU check (bf16 FSDP against fp32), run by hand on a GPU machine, not a timing",
}


@dataclass
class Row:
    metric: str
    script: str
    value: str = ""
    goal: str = ""
    met: str = ""
    detail: str = ""
    ok: bool = True


def unlisted() -> list[str]:
    """Scripts in benchmarks/ that are neither a benchmark nor a known helper."""
    known = {b.script for b in BENCHMARKS} | set(NOT_BENCHMARKS)
    return sorted(p.name for p in HERE.iterdir() if p.suffix in (".py", ".sh") and p.name not in known)


def command(bench: Benchmark, quick: bool) -> list[str]:
    path = HERE / bench.script
    head = ["bash", str(path)] if path.suffix == ".sh" else [sys.executable, str(path)]
    return [*head, *bench.args, *(bench.quick if quick else ())]


def run(bench: Benchmark, quick: bool, quiet: bool) -> list[Row]:
    """Run one benchmark; its rows for the table."""
    if not (HERE / bench.script).exists():
        return [Row("skipped: not in this checkout", bench.script)]
    for need in bench.needs:
        why = NEEDS[need]()
        if why:
            return [Row(f"skipped: needs {need} ({why})", bench.script)]
    paths = [str(HERE), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}
    print(f"\n=== {bench.script} {' '.join(command(bench, quick)[2:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command(bench, quick), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    rows: list[Row] = []
    tail: list[str] = []
    for line in proc.stdout:
        if not quiet:
            print(line, end="", flush=True)
        tail = [*tail[-19:], line]
        if line.startswith(PREFIX):
            rows.append(_row(json.loads(line[len(PREFIX):]), bench.script))
    code = proc.wait()
    seconds = time.perf_counter() - start
    # Some scripts exit 1 when they miss a goal: that is its row already. A non-zero exit with every goal
    # met (a check of theirs failed, e.g. different weights) or no BENCH line at all is a failure of its own.
    if not rows or (code != 0 and all(r.ok for r in rows)):
        why = f"exit code {code}" if code != 0 else "no BENCH line"
        if quiet:
            print("".join(tail), end="")
        rows.append(Row(f"failed: {why} after {seconds:.0f} s", bench.script, ok=False))
    return rows


def _row(data: dict[str, object], script: str) -> Row:
    unit = str(data.get("unit", "x"))
    sign = "<=" if data["better"] == "lower" else ">="
    value, goal = float(str(data["value"])), float(str(data["goal"]))
    return Row(str(data["metric"]), script, f"{value:.3g}{unit}", f"{sign} {goal:g}{unit}",
               "yes" if data["met"] else "NO", str(data.get("detail", "")), ok=bool(data["met"]))


def table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title, show_lines=False)
    for name in ("metric", "value", "goal", "met", "script", "detail"):
        out.add_column(name, overflow="fold")
    for row in rows:
        style = "" if row.ok else "bold red"
        out.add_row(row.metric, row.value, row.goal, row.met, row.script, row.detail, style=style)
    Console(width=max(160, shutil.get_terminal_size().columns)).print(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark with --quick (a few minutes in all)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these scripts (e.g. features_throughput)")
    parser.add_argument("--quiet", action="store_true", help="do not show the benchmarks' own output")
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b.script.rsplit(".", 1)[0] in args.only
              or b.script in args.only]
    rows = [Row(f"failed: not listed in {Path(__file__).name} (a benchmark or a helper?)", name, ok=False)
            for name in unlisted()]
    for bench in chosen:
        rows += run(bench, args.quick, args.quiet)
    load = os.getloadavg()
    print()
    table(rows, f"make bench{' QUICK=1' if args.quick else ''}: ratio vs goal "
                f"(load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs)")
    failed = [r for r in rows if not r.ok]
    print(f"{len(failed)} missed or failed" if failed else "every goal met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
