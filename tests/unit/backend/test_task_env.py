"""One srun task of a multi-task job (mltf_flow.backend.task): SLURM's compressed tasks-per-node lists, and the
torchrun variables each task gets from SLURM's, which must be the same contract, key for key, as the Dask
DDP launcher's (mltf_flow.ddp.plan.torchrun_env) for the same layout."""

from __future__ import annotations

import pytest

from mltf_flow.backend.task import slurm_contract_env, tasks_per_node
from mltf_flow.ddp.plan import RankAssignment, WorkerSlot, plan_ranks, torchrun_env
from mltf_flow.errors import ConfigError

RUN_ID = "feedc0de" * 4
MASTER = ("node-a", 29511)
DEVICE_KEYS = ("CUDA_VISIBLE_DEVICES", "MLTF_GPU_DEVICE")


@pytest.mark.parametrize(
    ("text", "counts"),
    [("2(x3),1", [2, 2, 2, 1]), ("4", [4]), ("1,2", [1, 2]), (" 2(x2) , 3 ", [2, 2, 3]), ("", []),
     ("8(x1)", [8])],
)
def test_tasks_per_node(text: str, counts: list[int]) -> None:
    assert tasks_per_node(text) == counts


@pytest.mark.parametrize("text", ["2(x)", "a", "2x3", "(x2)", "2(x3", "-1"])
def test_tasks_per_node_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="cannot read SLURM's tasks per node"):
        tasks_per_node(text)


def srun_environ(rank: int, per_node: list[int], *, step: bool = True, devices: str | None = None) -> dict[str, str]:
    """The variables srun gives task ``rank`` of a block-distributed step with ``per_node`` tasks per node."""
    node, first = 0, 0
    while rank >= first + per_node[node]:
        first += per_node[node]
        node += 1
    compressed = ",".join(str(n) for n in per_node)
    counts = {"SLURM_STEP_NUM_TASKS": str(sum(per_node)), "SLURM_STEP_NUM_NODES": str(len(per_node)),
              "SLURM_STEP_TASKS_PER_NODE": compressed}
    if not step:  # only the allocation's variables (SLURM_NTASKS, SLURM_NNODES, SLURM_TASKS_PER_NODE)
        counts = {"SLURM_NTASKS": counts["SLURM_STEP_NUM_TASKS"], "SLURM_NNODES": counts["SLURM_STEP_NUM_NODES"],
                  "SLURM_TASKS_PER_NODE": compressed}
    env = {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank - first), "SLURM_NODEID": str(node),
           "MLTF_MASTER_ADDR": MASTER[0], "MLTF_MASTER_PORT": str(MASTER[1]), "SLURM_JOB_ID": "4242", **counts}
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    return env


def test_two_nodes_two_tasks_exactly() -> None:
    per_node = [2, 2]
    expected = {
        0: ("0", "0", "0"), 1: ("1", "1", "0"), 2: ("2", "0", "1"), 3: ("3", "1", "1"),
    }
    for rank, (r, local, group) in expected.items():
        env = slurm_contract_env(srun_environ(rank, per_node), RUN_ID)
        assert env == {
            "RANK": r, "WORLD_SIZE": "4", "LOCAL_RANK": local, "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": group,
            "GROUP_WORLD_SIZE": "2", "ROLE_NAME": "default", "ROLE_RANK": r, "ROLE_WORLD_SIZE": "4",
            "MASTER_ADDR": "node-a", "MASTER_PORT": "29511", "TORCHELASTIC_RUN_ID": RUN_ID,
            "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0", "OMP_NUM_THREADS": "1",
        }


def test_compressed_step_tasks_per_node() -> None:
    environ = srun_environ(3, [2, 2]) | {"SLURM_STEP_TASKS_PER_NODE": "2(x2)"}
    env = slurm_contract_env(environ, RUN_ID)
    assert (env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"], env["LOCAL_RANK"]) == ("2", "1", "1")


def test_allocation_variables_are_the_fallback() -> None:
    assert slurm_contract_env(srun_environ(2, [2, 2], step=False), RUN_ID) == slurm_contract_env(
        srun_environ(2, [2, 2]), RUN_ID)


def planned(per_node: list[int], with_devices: bool) -> list[RankAssignment]:
    """The Dask launcher's plan for the same layout: one host per node, one worker (and GPU) per task."""
    slots = [
        WorkerSlot(address=f"tcp://10.0.0.{node + 1}:{40000 + k}", hostname=f"node-{'abcdefgh'[node]}",
                   name=f"job-4242-{k}", slurm_job="4242", device=str(k) if with_devices else None)
        for node, count in enumerate(per_node) for k in range(count)
    ]
    return plan_ranks(slots, len(slots))


@pytest.mark.parametrize("per_node", [[2, 2], [1], [4], [3, 1], [1, 3], [2, 2, 2, 1]])
@pytest.mark.parametrize("with_devices", [False, True])
def test_same_torchrun_contract_as_the_dask_launcher(per_node: list[int], with_devices: bool) -> None:
    plan = planned(per_node, with_devices)
    assert len(plan) == sum(per_node)
    for ra in plan:
        dask = torchrun_env(ra, *MASTER, RUN_ID)
        devices = ",".join(ra.node_devices) if with_devices else None
        slurm = slurm_contract_env(srun_environ(ra.rank, per_node, devices=devices), RUN_ID)
        without = {k: v for k, v in dask.items() if k not in DEVICE_KEYS}
        assert {k: v for k, v in slurm.items() if k not in DEVICE_KEYS} == without, ra
        # Both pick the rank's GPU the same way: every GPU of the node visible, LOCAL_RANK's one chosen.
        assert slurm.get("MLTF_GPU_DEVICE") == dask.get("MLTF_GPU_DEVICE"), ra


def test_gpu_device_follows_local_rank() -> None:
    env = slurm_contract_env(srun_environ(3, [2, 2], devices="2,3"), RUN_ID)
    assert env["MLTF_GPU_DEVICE"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in env  # SLURM's own value stays as it is
    assert "MLTF_GPU_DEVICE" not in slurm_contract_env(srun_environ(3, [2, 2], devices=""), RUN_ID)


@pytest.mark.parametrize("name", ["SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "MLTF_MASTER_ADDR",
                                  "MLTF_MASTER_PORT"])
def test_missing_variable(name: str) -> None:
    environ = srun_environ(1, [2, 2])
    del environ[name]
    with pytest.raises(ConfigError, match=f"{name} is not set"):
        slurm_contract_env(environ, RUN_ID)


def test_missing_task_counts() -> None:
    environ = srun_environ(1, [2, 2])
    for key in ("SLURM_STEP_NUM_TASKS", "SLURM_STEP_NUM_NODES", "SLURM_STEP_TASKS_PER_NODE"):
        del environ[key]
    with pytest.raises(ConfigError, match="is not set"):
        slurm_contract_env(environ, RUN_ID)


def test_empty_variable_counts_as_missing() -> None:
    with pytest.raises(ConfigError, match="SLURM_PROCID is not set"):
        slurm_contract_env(srun_environ(0, [1]) | {"SLURM_PROCID": ""}, RUN_ID)
