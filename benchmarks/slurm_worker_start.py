"""SLURM worker start: mltf_flow's cluster (profile -> pre-flight -> scale -> wait) vs plain dask-jobqueue
(``SLURMCluster(...)`` -> ``scale(jobs=2)`` -> ``wait_for_workers(2)``) with the same job shape, interleaved,
in this run. Needs a SLURM cluster (tests/infra/slurm.sh up) and the `slurm-ci` profile.

    python benchmarks/slurm_worker_start.py [--repeats 3]
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

REPO = Path(__file__).resolve().parent.parent


def plain(log_dir: Path) -> float:
    from dask_jobqueue.slurm import SLURMCluster
    from distributed import Client

    start = time.perf_counter()
    cluster = SLURMCluster(cores=1, processes=1, memory="1GB", queue="debug", walltime="00:30:00",
                           interface="lo", log_directory=str(log_dir), python=sys.executable,
                           scheduler_options={"dashboard_address": None})
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
    client = session.get_client(session.address(profile))  # includes sbatch --test-only
    session.wait_for_workers(client, profile)
    elapsed = time.perf_counter() - start
    session.close_all()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("sbatch") is None:
        raise SystemExit("no SLURM here: run `tests/infra/slurm.sh up` as root first")
    os.chdir(REPO)  # ./profiles.yaml holds slurm-ci
    with tempfile.TemporaryDirectory(prefix="mltf-bench-") as tmp:
        os.environ["MLTF_FLOW_WORK_DIR"] = str(Path(tmp) / "work")
        os.environ["MLTF_MAIN_PID"] = str(os.getpid())
        a, b = [], []
        for _ in range(args.repeats):
            b.append(plain(Path(tmp) / "plain-logs"))
            a.append(ours())
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"plain dask-jobqueue scale(jobs=2) -> 2 workers: {mb:6.2f} s (median of {args.repeats})")
    print(f"mltf_flow slurm-ci (pre-flight + scale + wait):  {ma:6.2f} s")
    print(f"ratio mltf_flow/plain: {ma / mb:.2f}x")


if __name__ == "__main__":
    main()
