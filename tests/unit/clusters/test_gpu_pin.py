"""The worker preload that pins each worker process of a multi-GPU job to its own device."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from mltf_flow.clusters.gpu_pin import dask_setup, device_for, job_devices

GPU_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
    "SLURM_GPUS_ON_NODE",
    "MLTF_GPUS_PER_JOB",
    "MLTF_WORKERS_PER_JOB",
)


@pytest.fixture(autouse=True)
def no_gpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from no GPU variables; the two dask_setup writes are registered so monkeypatch restores them."""
    for var in GPU_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "sentinel")
    monkeypatch.setenv("MLTF_GPU_DEVICE", "sentinel")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delenv("MLTF_GPU_DEVICE")


@pytest.mark.parametrize(
    ("environ", "devices"),
    [
        ({"CUDA_VISIBLE_DEVICES": "4,5,6,7"}, ["4", "5", "6", "7"]),
        ({"CUDA_VISIBLE_DEVICES": " 2, 3 ,"}, ["2", "3"]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-a1b2,GPU-c3d4"}, ["GPU-a1b2", "GPU-c3d4"]),
        ({"SLURM_STEP_GPUS": "1,3"}, ["1", "3"]),
        ({"SLURM_JOB_GPUS": "0,2"}, ["0", "2"]),
        ({"SLURM_GPUS_ON_NODE": "3"}, ["0", "1", "2"]),
        ({"MLTF_GPUS_PER_JOB": "2"}, ["0", "1"]),
        ({}, []),
        ({"SLURM_GPUS_ON_NODE": "", "MLTF_GPUS_PER_JOB": ""}, []),
    ],
    ids=[
        "cuda",
        "cuda-spaces",
        "cuda-uuids",
        "step-gpus",
        "job-gpus",
        "gpus-on-node",
        "mltf-gpus",
        "nothing",
        "empty-counts",
    ],
)
def test_job_devices_sources(environ: dict[str, str], devices: list[str]) -> None:
    assert job_devices(environ) == devices


@pytest.mark.parametrize(
    ("environ", "devices"),
    [
        (
            {"CUDA_VISIBLE_DEVICES": "7", "SLURM_STEP_GPUS": "1", "SLURM_JOB_GPUS": "2", "SLURM_GPUS_ON_NODE": "4"},
            ["7"],
        ),
        ({"SLURM_STEP_GPUS": "1", "SLURM_JOB_GPUS": "2", "SLURM_GPUS_ON_NODE": "4"}, ["1"]),
        ({"SLURM_JOB_GPUS": "2", "SLURM_GPUS_ON_NODE": "4"}, ["2"]),
        ({"SLURM_GPUS_ON_NODE": "2", "MLTF_GPUS_PER_JOB": "4"}, ["0", "1"]),
    ],
    ids=["cuda-first", "step-before-job", "job-before-count", "slurm-count-before-mltf"],
)
def test_job_devices_precedence(environ: dict[str, str], devices: list[str]) -> None:
    assert job_devices(environ) == devices


def test_job_devices_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_GPUS", "3,1")
    assert job_devices(os.environ) == ["3", "1"]


def test_device_for_gives_each_worker_of_a_job_its_own_device() -> None:
    devices = ["4", "5", "6", "7"]
    names = [f"SLURMCluster-3-{k}" for k in range(4)]
    assert [device_for(name, 4, devices) for name in names] == devices


def test_device_for_single_process_job_uses_the_first_device() -> None:
    # a one-process job's name ends in the job's index, not a worker index: it must not pick device 3
    for name in ("SLURMCluster-3", "SLURMCluster-0", "tcp://10.0.0.1:1234", "worker"):
        assert device_for(name, 1, ["4", "5", "6", "7"]) == "4"


def test_device_for_name_without_index_uses_the_first_device() -> None:
    assert device_for("worker", 4, ["2", "3"]) == "2"


def test_device_for_without_devices_is_none() -> None:
    assert device_for("SLURMCluster-3-2", 4, []) is None
    assert device_for("SLURMCluster-3", 1, []) is None


@pytest.mark.parametrize(("k", "device"), [(0, "4"), (1, "5"), (2, "6"), (3, "7")])
def test_dask_setup_pins_the_worker(k: int, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setenv("MLTF_WORKERS_PER_JOB", "4")
    dask_setup(SimpleNamespace(name=f"SLURMCluster-12-{k}"))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == device
    assert os.environ["MLTF_GPU_DEVICE"] == device


def test_dask_setup_counts_devices_from_mltf_gpus_per_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_GPUS_PER_JOB", "2")
    monkeypatch.setenv("MLTF_WORKERS_PER_JOB", "2")
    dask_setup(SimpleNamespace(name="SLURMCluster-0-1"))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert os.environ["MLTF_GPU_DEVICE"] == "1"


def test_dask_setup_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_GPUS", "2")
    dask_setup(SimpleNamespace(name="SLURMCluster-5"))  # MLTF_WORKERS_PER_JOB unset: one process per job
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    assert os.environ["MLTF_GPU_DEVICE"] == "2"


def test_dask_setup_without_gpus_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_WORKERS_PER_JOB", "4")
    dask_setup(SimpleNamespace(name="SLURMCluster-0-2"))
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert "MLTF_GPU_DEVICE" not in os.environ
