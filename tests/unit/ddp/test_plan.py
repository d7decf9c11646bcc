"""DDP rank planning, the torchrun environment, the world-size check and the launcher's failure summary.

All pure: synthetic WorkerSlots, no Dask cluster, no processes.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.clusters.profiles import LocalProfile, Profile, SlurmProfile
from mltf_flow.ddp.launcher import DDPLauncher, check_world_size
from mltf_flow.ddp.plan import (
    RankAssignment,
    WorkerSlot,
    describe,
    plan_ranks,
    slots_from_facts,
    torchrun_env,
)
from mltf_flow.errors import ClusterError, ConfigError, StepFailed
from mltf_flow.launch.base import LaunchRequest

_PORTS = itertools.count(40000)


def slot(host: str, name: str, job: str | None = None, device: str | None = None) -> WorkerSlot:
    return WorkerSlot(address=f"tcp://10.0.0.{sum(map(ord, host)) % 250 + 1}:{next(_PORTS)}", hostname=host,
                      name=name, slurm_job=job, device=device)


def layout(plan: list[RankAssignment]) -> list[tuple[int, str, str, int, int, int, int]]:
    """(rank, host, name, local_rank, local_world_size, node_rank, nodes) per rank."""
    return [(ra.rank, ra.worker.hostname, ra.worker.name, ra.local_rank, ra.local_world_size, ra.node_rank,
             ra.nodes) for ra in plan]


def shuffled(items: list[WorkerSlot], seed: int = 7) -> list[WorkerSlot]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


# --------------------------------------------------------------------------------------------- plan_ranks


def test_hosts_in_shuffled_order_with_uneven_counts() -> None:
    workers = [slot("nodeA", str(i)) for i in range(3)] + [slot("nodeB", "0")] + \
        [slot("nodeC", str(i)) for i in range(2)]
    plan = plan_ranks(shuffled(workers), 6)
    assert layout(plan) == [
        (0, "nodeA", "0", 0, 3, 0, 3),
        (1, "nodeA", "1", 1, 3, 0, 3),
        (2, "nodeA", "2", 2, 3, 0, 3),
        (3, "nodeB", "0", 0, 1, 1, 3),
        (4, "nodeC", "0", 0, 2, 2, 3),
        (5, "nodeC", "1", 1, 2, 2, 3),
    ]
    assert all(ra.world_size == 6 for ra in plan)
    assert all(ra.node_devices == () and ra.device is None for ra in plan)


def test_dask_jobqueue_names_sort_by_numeric_index() -> None:
    names = [f"SLURMCluster-3-{k}" for k in (10, 2, 0, 1)]
    workers = [slot("gpu01", n, job="3") for n in names]
    plan = plan_ranks(workers, 4)
    assert [ra.worker.name for ra in plan] == [f"SLURMCluster-3-{k}" for k in (0, 1, 2, 10)]
    assert [ra.local_rank for ra in plan] == [0, 1, 2, 3]


def test_local_cluster_names_sort_numerically() -> None:
    workers = [slot("laptop", n) for n in ("10", "1", "0", "2")]
    plan = plan_ranks(workers, 4)
    assert [ra.worker.name for ra in plan] == ["0", "1", "2", "10"]
    assert {ra.worker.node for ra in plan} == {"laptop"}
    assert [ra.local_rank for ra in plan] == [0, 1, 2, 3]


def test_slurm_job_ids_sort_numerically_not_as_strings() -> None:
    # "10" < "9" as strings; job 9 must still come first.
    workers = [slot("gpu01", "SLURMCluster-10-0", job="10"), slot("gpu01", "SLURMCluster-9-0", job="9")]
    plan = plan_ranks(workers, 2)
    assert [ra.worker.slurm_job for ra in plan] == ["9", "10"]


def test_two_jobs_on_one_host_are_two_nodes() -> None:
    workers = [slot("gpu01", f"SLURMCluster-{job}-{k}", job=job) for job in ("10", "9") for k in (1, 0)]
    plan = plan_ranks(workers, 4)
    assert [(ra.worker.slurm_job, ra.local_rank, ra.node_rank) for ra in plan] == [
        ("9", 0, 0), ("9", 1, 0), ("10", 0, 1), ("10", 1, 1),
    ]
    assert all(ra.nodes == 2 and ra.local_world_size == 2 for ra in plan)
    assert [ra.worker.node for ra in plan] == ["gpu01/job9", "gpu01/job9", "gpu01/job10", "gpu01/job10"]


def test_two_jobs_on_one_host_may_both_use_device_0() -> None:
    # SLURM renumbers each job's GPUs: device "0" of job 9 and of job 10 are different GPUs.
    workers = [slot("gpu01", f"SLURMCluster-{job}-0", job=job, device="0") for job in ("9", "10")]
    plan = plan_ranks(workers, 2)
    assert [ra.node_devices for ra in plan] == [("0",), ("0",)]


def test_plan_does_not_depend_on_input_order() -> None:
    workers = [
        slot("b", "SLURMCluster-12-0", job="12"), slot("b", "SLURMCluster-12-1", job="12"),
        slot("a", "SLURMCluster-9-1", job="9"), slot("a", "SLURMCluster-10-0", job="10"),
        slot("a", "SLURMCluster-9-0", job="9"),
    ]
    expected = plan_ranks(workers, 5)
    for perm in itertools.permutations(workers):
        assert plan_ranks(list(perm), 5) == expected
        assert plan_ranks(iter(perm), 5) == expected  # any iterable
    assert [ra.worker.name for ra in expected] == [
        "SLURMCluster-9-0", "SLURMCluster-9-1", "SLURMCluster-10-0", "SLURMCluster-12-0", "SLURMCluster-12-1",
    ]


def test_same_name_on_one_host_falls_back_to_address() -> None:
    w1 = WorkerSlot(address="tcp://10.0.0.1:5001", hostname="h", name="w")
    w2 = WorkerSlot(address="tcp://10.0.0.1:5000", hostname="h", name="w")
    assert [ra.worker for ra in plan_ranks([w1, w2], 2)] == [w2, w1]


def test_smaller_world_size_takes_the_first_workers() -> None:
    workers = [slot("a", str(i)) for i in range(2)] + [slot("b", str(i)) for i in range(2)]
    plan = plan_ranks(shuffled(workers), 3)
    assert layout(plan) == [
        (0, "a", "0", 0, 2, 0, 2),
        (1, "a", "1", 1, 2, 0, 2),
        (2, "b", "0", 0, 1, 1, 2),  # b's second worker is not used: its node has one rank
    ]
    assert all(ra.world_size == 3 for ra in plan)


def test_larger_world_size_names_both_numbers() -> None:
    workers = [slot("a", str(i)) for i in range(3)]
    with pytest.raises(ClusterError, match=r"needs 5 workers but the cluster has 3"):
        plan_ranks(workers, 5)


@pytest.mark.parametrize("world_size", [0, -1])
def test_world_size_below_one(world_size: int) -> None:
    with pytest.raises(ClusterError, match=rf"world size {world_size}"):
        plan_ranks([slot("a", "0")], world_size)


def test_no_workers_at_all() -> None:
    with pytest.raises(ClusterError, match="needs 1 workers but the cluster has 0"):
        plan_ranks([], 1)


def test_mixed_pinned_and_unpinned_on_one_node() -> None:
    workers = [slot("g", "SLURMCluster-1-0", job="1", device="0"), slot("g", "SLURMCluster-1-1", job="1")]
    with pytest.raises(ClusterError, match=r"node g/job1: some workers are pinned"):
        plan_ranks(workers, 2)


def test_two_workers_pinned_to_the_same_gpu() -> None:
    workers = [slot("g", f"SLURMCluster-1-{k}", job="1", device="1") for k in range(2)]
    with pytest.raises(ClusterError, match=r"node g/job1: two workers are pinned to the same GPU"):
        plan_ranks(workers, 2)


def test_unused_workers_are_not_checked() -> None:
    # The broken pinning is only on a worker that gets no rank.
    workers = [slot("a", "0", device="0"), slot("a", "1", device="1"), slot("b", "0", device="0"), slot("b", "1")]
    plan = plan_ranks(workers, 3)
    assert [ra.node_devices for ra in plan] == [("0", "1"), ("0", "1"), ("0",)]


# --------------------------------------------------------------------------------------------- devices


def gpu_job(devices_by_index: Mapping[int, str], host: str = "gpu07", job: str = "42") -> list[WorkerSlot]:
    return [slot(host, f"SLURMCluster-{job}-{k}", job=job, device=d) for k, d in devices_by_index.items()]


def test_node_devices_in_local_rank_order() -> None:
    workers = shuffled(gpu_job({k: str(k) for k in range(4)}), seed=3)
    plan = plan_ranks(workers, 4)
    for ra in plan:
        assert ra.node_devices == ("0", "1", "2", "3")
        assert ra.node_devices[ra.local_rank] == ra.device
        env = torchrun_env(ra, "10.0.0.1", 29500, "run")
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
        assert env["MLTF_GPU_DEVICE"] == ra.device == str(ra.local_rank)


def test_own_device_is_local_rank_even_when_names_and_devices_disagree() -> None:
    # Worker -0 pinned to GPU 2, etc.: CUDA_VISIBLE_DEVICES lists the node's devices in local-rank order,
    # so cuda:LOCAL_RANK is always the rank's own device.
    workers = shuffled(gpu_job({0: "2", 1: "0", 2: "3", 3: "1"}), seed=11)
    plan = plan_ranks(workers, 4)
    assert [ra.node_devices for ra in plan] == [("2", "0", "3", "1")] * 4
    for ra in plan:
        env = torchrun_env(ra, "10.0.0.1", 29500, "run")
        visible = env["CUDA_VISIBLE_DEVICES"].split(",")
        assert visible[int(env["LOCAL_RANK"])] == env["MLTF_GPU_DEVICE"] == ra.device


def test_node_devices_are_per_node() -> None:
    workers = gpu_job({0: "0", 1: "1"}, host="g1", job="5") + gpu_job({0: "0", 1: "1", 2: "2"}, host="g2", job="6")
    plan = plan_ranks(shuffled(workers), 5)
    assert [(ra.worker.hostname, ra.node_devices) for ra in plan] == [
        ("g1", ("0", "1")), ("g1", ("0", "1")),
        ("g2", ("0", "1", "2")), ("g2", ("0", "1", "2")), ("g2", ("0", "1", "2")),
    ]


# --------------------------------------------------------------------------------------------- torchrun_env

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def test_torchrun_env_on_cpu_workers() -> None:
    workers = [slot("a", "0"), slot("a", "1"), slot("b", "0")]
    plan = plan_ranks(workers, 3)
    env = torchrun_env(plan[2], "10.0.0.9", 29511, "run-abc")
    assert set(TORCHRUN_KEYS) <= set(env)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    assert {k: env[k] for k in TORCHRUN_KEYS} == {
        "RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2", "ROLE_RANK": "2", "ROLE_WORLD_SIZE": "3", "MASTER_ADDR": "10.0.0.9",
        "MASTER_PORT": "29511", "TORCHELASTIC_RUN_ID": "run-abc",
    }
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert "MLTF_GPU_DEVICE" not in env


def test_torchrun_env_every_rank_agrees_on_master_and_world() -> None:
    plan = plan_ranks(gpu_job({k: str(k) for k in range(2)}) + gpu_job({0: "0"}, host="h2", job="43"), 3)
    envs = [torchrun_env(ra, "10.1.1.1", 1234, "r") for ra in plan]
    assert {(e["MASTER_ADDR"], e["MASTER_PORT"], e["WORLD_SIZE"], e["GROUP_WORLD_SIZE"]) for e in envs} == {
        ("10.1.1.1", "1234", "3", "2")
    }
    assert [e["RANK"] for e in envs] == ["0", "1", "2"]
    assert all(set(TORCHRUN_KEYS) <= set(e) for e in envs)


# --------------------------------------------------------------------------------------------- slots


@pytest.mark.parametrize(
    ("address", "ip"),
    [("tcp://10.0.0.5:40123", "10.0.0.5"), ("tcp://[::1]:4000", "::1"), ("ucx://10.1.2.3:1234", "10.1.2.3")],
)
def test_worker_ip(address: str, ip: str) -> None:
    assert WorkerSlot(address=address, hostname="h", name="0").ip == ip


def test_node_name() -> None:
    assert WorkerSlot(address="tcp://1.2.3.4:1", hostname="h", name="0").node == "h"
    assert WorkerSlot(address="tcp://1.2.3.4:1", hostname="h", name="0", slurm_job="7").node == "h/job7"


def test_slots_from_facts() -> None:
    facts: dict[str, dict[str, object]] = {
        "tcp://10.0.0.1:1": {"hostname": "gpu01", "slurm_job": "9", "device": "1", "pid": 11},
        "tcp://10.0.0.2:2": {"hostname": "gpu02", "slurm_job": 10, "device": None, "pid": 12},
        "tcp://10.0.0.3:3": {"hostname": "cpu01", "slurm_job": None, "device": None, "pid": 13},
    }
    names = {"tcp://10.0.0.1:1": "SLURMCluster-9-1", "tcp://10.0.0.2:2": "SLURMCluster-10-0"}
    slots = slots_from_facts(facts, names)
    assert slots == [
        WorkerSlot("tcp://10.0.0.1:1", "gpu01", "SLURMCluster-9-1", slurm_job="9", device="1"),
        WorkerSlot("tcp://10.0.0.2:2", "gpu02", "SLURMCluster-10-0", slurm_job="10", device=None),
        WorkerSlot("tcp://10.0.0.3:3", "cpu01", "tcp://10.0.0.3:3", slurm_job=None, device=None),  # no name
    ]


def test_describe() -> None:
    plan = plan_ranks(gpu_job({0: "0"}), 1)
    assert describe(plan) == [{"rank": 0, "host": "gpu07", "local_rank": 0, "worker": plan[0].worker.address,
                               "slurm_job": "42", "device": "0"}]


# --------------------------------------------------------------------------------------------- world size


def slurm_profile() -> Profile:
    return SlurmProfile(name="x", workers=2, gpus_per_node=4, cores=4)


def test_check_world_size_fits() -> None:
    profile = slurm_profile()
    assert profile.expected_workers == 8
    check_world_size(profile, 8)
    check_world_size(profile, 1)


def test_check_world_size_too_large_names_the_profile() -> None:
    with pytest.raises(ConfigError, match=r"world_size=9 but profile 'x' gives 8 workers \(2 jobs x 4 worker"):
        check_world_size(slurm_profile(), 9)


def test_check_world_size_local_profile() -> None:
    local = LocalProfile(name="loc", workers=2)
    check_world_size(local, 2)
    with pytest.raises(ConfigError, match=r"profile 'loc' gives 2 workers \(2 workers;"):
        check_world_size(local, 3)


@pytest.mark.parametrize("world_size", [0, -3])
def test_check_world_size_below_one(world_size: int) -> None:
    with pytest.raises(ConfigError, match=rf"world_size={world_size}: need at least 1"):
        check_world_size(slurm_profile(), world_size)


# --------------------------------------------------------------------------------------------- failure summary


def launcher() -> DDPLauncher:
    return DDPLauncher(client=None, profile=slurm_profile(), world_size=2)


def request(tmp_path: Path, on_tags: Any = None) -> LaunchRequest:
    return LaunchRequest(step="train", command="python train.py", cwd=tmp_path, env={},
                         log_path=tmp_path / "logs" / "train.log", on_tags=on_tags)


def two_rank_plan() -> list[RankAssignment]:
    return plan_ranks([slot("gpu01", "SLURMCluster-9-0", job="9", device="0"),
                       slot("gpu02", "SLURMCluster-10-0", job="10", device="0")], 2)


def test_rank_log_paths(tmp_path: Path) -> None:
    req = request(tmp_path)
    assert launcher().rank_log(req, 0) == req.log_path
    assert launcher().rank_log(req, 3) == tmp_path / "logs" / "train.rank3.log"


def test_failed_rank_summary(tmp_path: Path) -> None:
    req, plan = request(tmp_path), two_rank_plan()
    outcomes: dict[int, dict[str, Any]] = {0: {"exit_code": -15, "tail": []},
                                           1: {"exit_code": 1, "tail": ["ValueError: boom"]}}
    result = launcher()._result(req, plan, outcomes, 1, 0.0)
    assert result.exit_code == 1
    assert result.stderr_tail == ["ValueError: boom"]
    assert result.log_path == req.log_path
    assert result.extra_logs == (("rank1.log", tmp_path / "logs" / "train.rank1.log"),)
    summary = result.summary
    assert summary is not None
    assert "rank 1 exited with code 1 first" in summary
    lines = summary.splitlines()
    (rank0,) = [line for line in lines if line.strip().startswith("rank 0 (")]
    assert "gpu01, SLURM job 9" in rank0 and plan[0].worker.address in rank0
    assert "killed by signal 15 (stopped after rank 1 failed)" in rank0
    (rank1,) = [line for line in lines if line.strip().startswith("rank 1 (")]
    assert rank1.endswith("exited with code 1")  # the first failure is not "stopped after" itself
    assert "      ! ValueError: boom" in lines
    assert lines.index("      ! ValueError: boom") > lines.index(rank1)


def test_lost_rank_takes_stderr_from_its_log(tmp_path: Path) -> None:
    req, plan = request(tmp_path), two_rank_plan()
    rank1_log = launcher().rank_log(req, 1)
    rank1_log.parent.mkdir(parents=True)
    rank1_log.write_text("# rank 1 on gpu02\n  epoch 1\n! Traceback (most recent call last):\n"
                         "  epoch 2\n! RuntimeError: NCCL communicator was aborted\n")
    status = "lost: its Dask worker disappeared (SLURM job 10 ended: cancelled, preempted or out of walltime?)"
    outcomes: dict[int, dict[str, Any]] = {
        0: {"exit_code": -15, "tail": []},
        1: {"exit_code": None, "tail": [], "lost": True, "status": status},
    }
    result = launcher()._result(req, plan, outcomes, 1, 0.0)
    assert result.exit_code == -9
    assert result.summary is not None
    assert f"rank 1 {status} first" in result.summary
    assert "      ! Traceback (most recent call last):" in result.summary.splitlines()
    assert "      ! RuntimeError: NCCL communicator was aborted" in result.summary.splitlines()
    assert "epoch" not in result.summary  # stdout lines are not stderr
    assert "killed by signal 15 (stopped after rank 1 failed)" in result.summary


def test_rank_without_report_and_rank_that_did_not_stop(tmp_path: Path) -> None:
    req = request(tmp_path)
    plan = plan_ranks([slot("h", str(i)) for i in range(3)], 3)
    outcomes: dict[int, dict[str, Any]] = {
        0: {"exit_code": 2, "tail": ["bad"]},
        1: {"exit_code": None, "tail": [], "status": "did not stop within 30 s (cancelled)"},
    }
    result = launcher()._result(req, plan, outcomes, 0, 0.0)
    assert result.exit_code == 2
    assert result.summary is not None
    assert "did not stop within 30 s (cancelled)" in result.summary
    assert "stopped after rank 0 failed" not in result.summary  # exit code None: no suffix
    assert re.search(r"rank 2 \(h, worker tcp://\S+\): no report", result.summary)


def test_success_has_no_summary(tmp_path: Path) -> None:
    req, plan = request(tmp_path), two_rank_plan()
    outcomes: dict[int, dict[str, Any]] = {0: {"exit_code": 0, "tail": []}, 1: {"exit_code": 0, "tail": []}}
    result = launcher()._result(req, plan, outcomes, None, 0.0)
    assert result.exit_code == 0
    assert result.summary is None
    assert result.stderr_tail == []
    assert result.extra_logs == (("rank1.log", tmp_path / "logs" / "train.rank1.log"),)
    assert result.duration_s >= 0


def test_result_tags_rank0_fabric(tmp_path: Path) -> None:
    tags: list[Mapping[str, str]] = []
    req, plan = request(tmp_path, on_tags=tags.append), two_rank_plan()
    outcomes: dict[int, dict[str, Any]] = {
        0: {"exit_code": 0, "tail": [], "fabric": {"NCCL_IB_HCA": "=mlx5_0:1"}, "note": "fabric: roce"},
        1: {"exit_code": 0, "tail": []},
    }
    launcher()._result(req, plan, outcomes, None, 0.0)
    assert tags == [{"mltf.ddp.fabric": "fabric: roce", "mltf.ddp.fabric_env": '{"NCCL_IB_HCA": "=mlx5_0:1"}'}]


@pytest.mark.parametrize(
    ("outcome", "text"),
    [
        ({"exit_code": 0}, "exited 0"),
        ({"exit_code": 3}, "exited with code 3"),
        ({"exit_code": -9}, "killed by signal 9"),
        ({"exit_code": None}, "exited with code None"),
        ({"exit_code": 1, "status": "the launcher task raised OSError"}, "the launcher task raised OSError"),
    ],
)
def test_status(outcome: dict[str, Any], text: str) -> None:
    assert DDPLauncher._status(outcome) == text


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    log.write_text("".join(f"! e{i}\n  o{i}\n" for i in range(12)) + "!no-space\n")
    assert DDPLauncher._log_tail(log) == [f"e{i}" for i in range(4, 12)]
    assert DDPLauncher._log_tail(log, lines=2) == ["e10", "e11"]
    assert DDPLauncher._log_tail(tmp_path / "missing.log") == []


# --------------------------------------------------------------------------------------------- StepFailed


def test_step_failed_with_summary() -> None:
    summary = "distributed training failed: rank 1 exited with code 1 first; every other rank was stopped."
    err = StepFailed(step="train", run_id="abc", exit_code=1, stderr_tail=["x"], log_path="/l/train.log",
                     summary=summary)
    assert summary in str(err)
    assert "marked FAILED" in str(err)
    assert "(MLflow run abc, marked FAILED)" in str(err)
    assert "/l/train.log" in str(err)
    assert "exited with code" not in str(err).replace(summary, "")
    assert err.summary == summary
    assert err.exit_code == 1


def test_step_failed_without_summary_keeps_old_form() -> None:
    err = StepFailed(step="train", run_id="abc", exit_code=2, stderr_tail=["boom"], log_path="/l/train.log")
    text = str(err)
    assert text.startswith("step 'train' failed: its command exited with code 2 (MLflow run abc, marked FAILED).")
    assert "    boom" in text
    assert err.summary is None
    no_tail = StepFailed(step="s", run_id=None, exit_code=1, stderr_tail=[], log_path="/l")
    assert "(no stderr output)" in str(no_tail)
