"""SLURM worker start: mltf_flow's cluster (profile -> pre-flight -> scale -> wait) vs plain dask-jobqueue
(``SLURMCluster(...)`` -> ``scale(jobs=2)`` -> ``wait_for_workers(2)``) with the same job shape, interleaved,
in this run; and how fast SLURM's rejection of an impossible profile reaches the user. Needs a SLURM
cluster (tests/infra/slurm.sh up) and the `slurm-ci` profile. Goals: mltf_flow's start at most 1 s more
than plain dask-jobqueue's (a fixed cost: the keeper process and the ``sbatch --test-only`` pre-flight, so a
difference, not a ratio, whose baseline moves with SLURM's scheduling interval), and SLURM's rejection
reaching the user in under 2 s.

    python benchmarks/slurm_worker_start.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_report import report

REPO = Path(__file__).resolve().parent.parent
GOAL_EXTRA_S = 1.0
GOAL_REJECTION_S = 2.0


def plain(log_dir: Path) -> float:
    from dask_jobqueue.slurm import SLURMCluster
    from distributed import Client

    from mltf_flow.clusters.dashboard import scheduler_options

    start = time.perf_counter()
    cluster = SLURMCluster(cores=1, processes=1, memory="1GB", queue="debug", walltime="00:30:00",
                           interface="lo", log_directory=str(log_dir), python=sys.executable,
                           scheduler_options=scheduler_options(None))
    cluster.scale(jobs=2)
    with Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=120)
    elapsed = time.perf_counter() - start
    cluster.close()
    return elapsed


def ours() -> float:
    from mltf_flow.clusters import session
    from mltf_flow.clusters.profiles import get_profile

    profile = get_profile("slurm-ci")
    start = time.perf_counter()
    client = session.client_for(profile)  # includes sbatch --test-only
    session.wait_for_workers(client, profile)
    elapsed = time.perf_counter() - start
    session.close_all()
    return elapsed


def rejection(tmp: Path) -> float:
    """Seconds until SLURM's rejection of a profile asking for 8 GPUs on the 4-GPU node reaches us."""
    from mltf_flow.clusters import session
    from mltf_flow.clusters.profiles import get_profile
    from mltf_flow.errors import SlurmRejected

    path = tmp / "bad.yaml"
    path.write_text("ci-gpu8:\n  extends: slurm-ci\n  gpus_per_node: 8\n  cores: 8\n  gpu_profile: null\n")
    repo_profiles = os.environ["MLTF_FLOW_PROFILE_FILES"]
    os.environ["MLTF_FLOW_PROFILE_FILES"] = f"{repo_profiles}{os.pathsep}{path}"
    start = time.perf_counter()
    try:
        session.prepare(get_profile("ci-gpu8"), scale=False)
    except SlurmRejected:
        return time.perf_counter() - start
    finally:
        session.close_all()
        os.environ["MLTF_FLOW_PROFILE_FILES"] = repo_profiles
    raise SystemExit("SLURM accepted an 8-GPU job on the 4-GPU test node?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2
    if shutil.which("sbatch") is None:
        raise SystemExit("no SLURM here: run `tests/infra/slurm.sh up` as root first")
    os.environ["MLTF_FLOW_PROFILE_FILES"] = str(REPO / "configs" / "profiles.yaml")  # slurm-ci
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp:
        os.environ["MLTF_FLOW_WORK_DIR"] = str(Path(tmp) / "work")
        os.environ["MLTF_MAIN_PID"] = str(os.getpid())
        a, b = [], []
        for _ in range(args.repeats):
            b.append(plain(Path(tmp) / "plain-logs"))
            a.append(ours())
        rejected = statistics.median(rejection(Path(tmp)) for _ in range(args.repeats))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"plain dask-jobqueue scale(jobs=2) -> 2 workers: {mb:6.2f} s (median of {args.repeats})")
    print(f"mltf_flow slurm-ci (pre-flight + scale + wait):  {ma:6.2f} s")
    report("SLURM worker start beyond plain dask-jobqueue", ma - mb, goal=GOAL_EXTRA_S, better="lower", unit=" s",
           detail=f"{ma:.2f} s vs {mb:.2f} s to 2 workers ({ma / mb:.2f}x), median of {args.repeats}")
    report("SLURM rejection reaches the user", rejected, goal=GOAL_REJECTION_S, better="lower", unit=" s",
           detail="a gpu:8 profile on the 4-GPU node; includes the keeper's start and Dask import")


if __name__ == "__main__":
    main()
