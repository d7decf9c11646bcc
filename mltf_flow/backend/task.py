"""One task of a multi-task job: ``srun ... python -m mltf_flow.backend.task SPEC``, once per rank.

The wrapper starts ``srun`` with one task per GPU (or ``ntasks``); each task turns SLURM's variables
into the torchrun contract (:func:`mltf_flow.ddp.plan.contract_env`, the same variables the Dask DDP
launcher gives its ranks), so one training script serves ``torchrun``, ``mltf-flow``'s DDP steps and
``mlflow run --backend mltf``:

=================  ===================================================================
RANK               ``SLURM_PROCID``
WORLD_SIZE         ``SLURM_NTASKS`` (the step's task count)
LOCAL_RANK         ``SLURM_LOCALID``
LOCAL_WORLD_SIZE   this node's entry of ``SLURM_STEP_TASKS_PER_NODE`` (``2(x3),1`` form)
GROUP_RANK         ``SLURM_NODEID``; GROUP_WORLD_SIZE: ``SLURM_STEP_NUM_NODES``
MASTER_ADDR/PORT   the allocation's first host and a port that was free there (set by the wrapper)
=================  ===================================================================

The fabric (NCCL/gloo interface, RoCE) is resolved on each task's own node, in the fresh process the
command starts in, as NCCL requires. Each rank logs system metrics as ``system/rank-<r>/...`` into the
run; rank 0 owns the run (its script calls ``mlflow.start_run()``, attaching through ``MLFLOW_RUN_ID``).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from mltf_flow.errors import ConfigError
from mltf_flow.launch.local import Stopped

_TASKS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def tasks_per_node(text: str) -> list[int]:
    """SLURM's compressed per-node task counts: ``2(x3),1`` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _TASKS.match(item)
        if not match:
            raise ConfigError(f"cannot read SLURM's tasks per node {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def slurm_contract_env(environ: Mapping[str, str], run_id: str) -> dict[str, str]:
    """The torchrun variables of this ``srun`` task (see the module docstring)."""
    from mltf_flow.ddp.plan import contract_env

    def need(name: str, *alternatives: str) -> str:
        for key in (name, *alternatives):
            if environ.get(key):
                return environ[key]
        raise ConfigError(
            f"{name} is not set: this runs as an srun task of an mltf job (see mltf_flow.backend.wrapper)."
        )

    node = int(need("SLURM_NODEID"))
    per_node = tasks_per_node(need("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"))
    if node >= len(per_node):
        raise ConfigError(f"SLURM_NODEID={node} but the tasks per node {per_node} list {len(per_node)} node(s).")
    env = contract_env(
        rank=int(need("SLURM_PROCID")), world_size=int(need("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")),
        local_rank=int(need("SLURM_LOCALID")), local_world_size=per_node[node],
        node_rank=node, nodes=int(need("SLURM_STEP_NUM_NODES", "SLURM_NNODES")),
        master_addr=need("MLTF_MASTER_ADDR"), master_port=int(need("MLTF_MASTER_PORT")), run_id=run_id,
    )
    devices = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if devices:
        # SLURM shows the task every GPU of its node; set_device(LOCAL_RANK) picks its own, as under torchrun.
        env["MLTF_GPU_DEVICE"] = devices[int(env["LOCAL_RANK"]) % len(devices)]
    return env


def _stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_IGN)
    raise Stopped(signum)


def main(argv: Sequence[str] | None = None) -> int:
    from mltf_flow.backend.spec import JobSpec
    from mltf_flow.fabric.spec import resolve_fabric
    from mltf_flow.launch.local import run_streaming

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m mltf_flow.backend.task SPEC", file=sys.stderr)
        return 2
    spec = JobSpec.read(Path(args[0]))
    contract = slurm_contract_env(os.environ, spec.run_id)
    rank = int(contract["RANK"])
    fabric = resolve_fabric(spec.fabric, interface=spec.interface)
    env = {**os.environ, **fabric.env, **contract}
    job = os.environ.get("SLURM_JOB_ID", "local")
    print(f"mltf_flow: rank {rank}/{contract['WORLD_SIZE']} local_rank {contract['LOCAL_RANK']} on "
          f"{os.uname().nodename}; master {contract['MASTER_ADDR']}:{contract['MASTER_PORT']}; {fabric.note}",
          flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    monitor = None
    if spec.system_metrics:
        from mltf_flow.ddp.monitor import RankMonitor

        monitor = RankMonitor(spec.run_id, spec.tracking_uri, f"rank-{rank}", env.get("MLTF_GPU_DEVICE"),
                              float(env.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "10"))).start()
    try:
        code = run_streaming(
            spec.command, cwd=Path(spec.project_dir), env=env,
            log_path=Path(spec.job_dir) / f"rank{rank}-{job}.log", display=spec.display_command,
            tail_lines=spec.stderr_tail_lines, echo_prefix="", stop_grace=spec.kill_grace,
        ).exit_code
    except Stopped:
        code = 128 + signal.SIGTERM
    finally:
        if monitor is not None:
            monitor.finish()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
