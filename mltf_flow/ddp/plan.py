"""Rank planning: which Dask worker runs which rank, and the torchrun environment each rank gets.

Pure functions over facts the launcher collects from the workers. Order is deterministic: by host, then
SLURM job, then the worker's index within its job (the ``-k`` suffix of its name), then its address,
so the same allocation always gives the same ranks. A *node*, for ``LOCAL_RANK`` purposes, is one
allocation on one host (a SLURM job, or the whole LocalCluster): that is what ``torchrun`` would see
if it were started once per job, and it is the set of GPUs the job's processes can all open.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mltf_flow.errors import ClusterError

_SUFFIX = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class WorkerSlot:
    """One Dask worker as the launcher found it."""

    address: str  # tcp://10.0.0.5:40123
    hostname: str
    name: str
    slurm_job: str | None = None
    device: str | None = None  # the GPU this worker is pinned to (CUDA_VISIBLE_DEVICES entry)

    @property
    def ip(self) -> str:
        """The address the worker listens on: reachable from the other workers (the profile's interface)."""
        host = self.address.split("://", 1)[-1].rsplit(":", 1)[0]
        return host.strip("[]")

    @property
    def node(self) -> str:
        return f"{self.hostname}/job{self.slurm_job}" if self.slurm_job else self.hostname

    def sort_key(self) -> tuple[str, int, str, int, str]:
        job = self.slurm_job or ""
        match = _SUFFIX.search(self.name)
        return (self.hostname, int(job) if job.isdigit() else -1, job, int(match.group(1)) if match else -1,
                self.address)


@dataclass(frozen=True)
class RankAssignment:
    """The torchrun contract of one rank."""

    worker: WorkerSlot
    rank: int
    local_rank: int
    local_world_size: int
    node_rank: int
    nodes: int
    world_size: int
    #: Devices of this rank's node in local-rank order (CUDA_VISIBLE_DEVICES of the rank), () on CPU.
    node_devices: tuple[str, ...] = ()

    @property
    def device(self) -> str | None:
        return self.worker.device


def plan_ranks(workers: Iterable[WorkerSlot], world_size: int) -> list[RankAssignment]:
    """Assign ranks 0..world_size-1 to the first ``world_size`` workers in deterministic order."""
    ordered = sorted(workers, key=WorkerSlot.sort_key)
    if world_size < 1:
        raise ClusterError(f"world size {world_size}: need at least 1 rank.")
    if len(ordered) < world_size:
        raise ClusterError(
            f"distributed training needs {world_size} workers but the cluster has {len(ordered)}: "
            "raise the profile's workers (jobs) or gpus_per_node, or lower world_size."
        )
    chosen = ordered[:world_size]
    nodes: dict[str, list[WorkerSlot]] = {}
    for slot in chosen:
        nodes.setdefault(slot.node, []).append(slot)
    plan: list[RankAssignment] = []
    for node_rank, members in enumerate(nodes.values()):
        devices = tuple(m.device for m in members if m.device is not None)
        if devices and len(devices) != len(members):
            raise ClusterError(f"node {members[0].node}: some workers are pinned to a GPU and some are not.")
        if len(set(devices)) != len(devices):
            raise ClusterError(f"node {members[0].node}: two workers are pinned to the same GPU {devices}.")
        for local_rank, slot in enumerate(members):
            plan.append(RankAssignment(
                worker=slot, rank=len(plan), local_rank=local_rank, local_world_size=len(members),
                node_rank=node_rank, nodes=len(nodes), world_size=world_size, node_devices=devices,
            ))
    return plan


def contract_env(
    *, rank: int, world_size: int, local_rank: int, local_world_size: int, node_rank: int, nodes: int,
    master_addr: str, master_port: int, run_id: str,
) -> dict[str, str]:
    """The variables ``torchrun`` gives each worker process (``torch.distributed.run``): the one contract
    every launcher of mltf_flow honours (Dask ranks here, ``srun`` tasks in :mod:`mltf_flow.backend.task`)."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_world_size),
        "GROUP_RANK": str(node_rank),
        "GROUP_WORLD_SIZE": str(nodes),
        "ROLE_NAME": "default",
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        # torchrun's own default for several processes per node; Dask's nanny sets the same.
        "OMP_NUM_THREADS": "1",
    }


def torchrun_env(ra: RankAssignment, master_addr: str, master_port: int, run_id: str) -> dict[str, str]:
    """The torchrun contract of one planned rank (see :func:`contract_env`)."""
    env = contract_env(
        rank=ra.rank, world_size=ra.world_size, local_rank=ra.local_rank, local_world_size=ra.local_world_size,
        node_rank=ra.node_rank, nodes=ra.nodes, master_addr=master_addr, master_port=master_port, run_id=run_id,
    )
    if ra.node_devices:
        # Every GPU of the node visible, in local-rank order: `torch.cuda.set_device(LOCAL_RANK)`
        # opens this rank's own device, as under torchrun.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ra.node_devices)
        env["MLTF_GPU_DEVICE"] = ra.node_devices[ra.local_rank]
    return env


def describe(plan: Iterable[RankAssignment]) -> list[dict[str, object]]:
    """The plan as plain data (for the run's tags and error messages)."""
    return [
        {"rank": ra.rank, "host": ra.worker.hostname, "local_rank": ra.local_rank, "worker": ra.worker.address,
         "slurm_job": ra.worker.slurm_job, "device": ra.device}
        for ra in plan
    ]


def slots_from_facts(facts: Mapping[str, Mapping[str, object]], names: Mapping[str, str]) -> list[WorkerSlot]:
    """WorkerSlots from what each worker reported about itself (``address -> facts``)."""
    slots = []
    for address, fact in facts.items():
        slots.append(WorkerSlot(
            address=address, hostname=str(fact.get("hostname") or ""), name=str(names.get(address, address)),
            slurm_job=str(fact["slurm_job"]) if fact.get("slurm_job") else None,
            device=str(fact["device"]) if fact.get("device") else None,
        ))
    return slots
