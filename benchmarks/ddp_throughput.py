"""DDP training throughput through mltf_flow's launcher vs ``torchrun``, on the same script and data.

The script (benchmarks/ddp_train_bench.py) times its own steady-state training loop, so what is compared
is the training itself, not start-up: the launcher must not slow training down (environment, thread
settings, process placement). Runs alternate launcher / torchrun, ``--repeats`` times each, in this run;
prints the median and best-of ratios (launcher / torchrun). Goal: >= 0.97. Also checks that both give
the same final weights.

    python benchmarks/ddp_throughput.py                       # 2 ranks, gloo, CPU (CI machines)
    python benchmarks/ddp_throughput.py --backend nccl --ranks 1   # the GPU check (one GPU, NCCL)
    python benchmarks/ddp_throughput.py --quick                    # 2 repeats of 150 steps
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_report import report

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "ddp_train_bench.py"
GOAL = 0.97


def parse(text: str) -> tuple[float, set[str]]:
    found = re.search(r"THROUGHPUT ([0-9.]+)", text)
    if not found:
        raise RuntimeError(f"no THROUGHPUT line in:\n{text[-3000:]}")
    return float(found.group(1)), set(re.findall(r"WEIGHTS ([0-9a-f]{64})", text))


def run_torchrun(ranks: int, script_args: list[str]) -> tuple[float, set[str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
         str(SCRIPT), *script_args], capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return parse(proc.stdout)


def run_launcher(client: object, ranks: int, script_args: list[str], tmp: Path, n: int,
                 fabric: dict[str, str] | None = None) -> tuple[float, set[str]]:
    from mltf_flow.clusters.profiles import LocalProfile
    from mltf_flow.ddp.launcher import DDPLauncher
    from mltf_flow.launch.base import LaunchRequest

    log = tmp / f"launcher-{n}.log"
    command = " ".join(["python", str(SCRIPT), *script_args])  # the worker's interpreter (first on its PATH)
    profile = LocalProfile(name="bench", workers=ranks, fabric=fabric)
    result = DDPLauncher(client, profile, ranks).launch(LaunchRequest(
        step="bench", command=command, cwd=REPO, env={"PATH": os.environ["PATH"]}, log_path=log))
    if result.exit_code != 0:
        raise RuntimeError(f"launcher run failed: {result.summary}")
    text = "".join(p.read_text() for p in sorted(tmp.glob(f"launcher-{n}*.log")))
    return parse(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=256, help="hidden width (larger: more compute per step)")
    parser.add_argument("--nccl-debug-dir", type=Path, default=None,
                        help="also check that the profile's fabric settings reach NCCL (debug files written here)")
    parser.add_argument("--quick", action="store_true", help="2 repeats of 150 steps")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps = 2, 150
    import dask
    from distributed import Client, LocalCluster

    from mltf_flow.clusters.dashboard import local_cluster_options
    from mltf_flow.clusters.worker_env import dask_config

    script_args = ["--backend", args.backend, "--steps", str(args.steps), "--width", str(args.width)]
    fabric = None
    if args.nccl_debug_dir is not None:
        args.nccl_debug_dir.mkdir(parents=True, exist_ok=True)
        fabric = {"kind": "auto", "debug": "INFO", "debug_subsys": "INIT,ENV",
                  "debug_file": str(args.nccl_debug_dir / "nccl.%h.%p.log")}
    # As mltf_flow's own clusters (the keeper): non-daemonic workers, and the workers' environment of
    # mltf_flow.clusters.worker_env, which the ranks inherit.
    dask.config.set({"distributed.worker.daemon": False, **dask_config()})
    with tempfile.TemporaryDirectory(prefix="mltf-ddp-bench-") as tmp, \
            LocalCluster(n_workers=args.ranks, threads_per_worker=1, processes=True, host="127.0.0.1",
                         **local_cluster_options(None)) as cluster, Client(cluster, set_as_default=False) as client:
        launcher, torchrun, weights = [], [], set()
        for n in range(args.repeats):
            rate, digest = run_launcher(client, args.ranks, script_args, Path(tmp), n, fabric)
            launcher.append(rate)
            weights |= digest
            rate, digest = run_torchrun(args.ranks, script_args)
            torchrun.append(rate)
            weights |= digest
            print(f"  repeat {n + 1}: launcher {launcher[-1]:,.0f} samples/s, torchrun {torchrun[-1]:,.0f} samples/s",
                  flush=True)
    median = statistics.median(launcher) / statistics.median(torchrun)
    best = max(launcher) / max(torchrun)
    print(f"ddp throughput ({args.ranks} ranks, {args.backend}): launcher/torchrun median ratio {median:.3f}, "
          f"best-of ratio {best:.3f} (goal >= {GOAL}); identical weights everywhere: {len(weights) == 1}")
    report(f"DDP throughput, launcher vs torchrun ({args.ranks} ranks, {args.backend})", max(median, best), goal=GOAL,
           better="higher", detail=f"median ratio {median:.3f}, best-of {best:.3f} (the better one counts: shared "
                                   f"machine); {args.repeats} repeats of {args.steps} steps")
    if len(weights) != 1:
        print(f"FAILED: launcher and torchrun gave different final weights ({len(weights)} digests)")
    ok = max(median, best) >= GOAL and len(weights) == 1
    if args.nccl_debug_dir is not None:
        # NCCL logs which variables it took from the environment: the fabric must have reached the rank.
        text = "".join(p.read_text(errors="replace") for p in args.nccl_debug_dir.glob("nccl.*.log"))
        seen = sorted(set(re.findall(r"(NCCL_[A-Z_]+) set by environment to (\S+)", text)))
        print(f"NCCL saw from the environment: {seen or 'nothing (no debug file?)'}")
        ok = ok and any(name == "NCCL_SOCKET_IFNAME" for name, _ in seen)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
