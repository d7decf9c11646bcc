"""SLURM profiles -> SLURMCluster keyword arguments, the rendered job script, and the pre-flight without sbatch.
The real SLURM's `sbatch --test-only` verdict is in tests/integration/slurm/test_worker_preflight.py."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from dask.utils import parse_timedelta

from mltf_flow.clusters.profiles import Profile, get_profile
from mltf_flow.clusters.slurm import preflight, render_job_script, slurm_cluster_kwargs
from mltf_flow.errors import ConfigError, SlurmRejected

WriteCwd = Callable[[object], Path]

QUOTED_EXPORT = "export NCCL_IB_HCA='=mlx5_0:1'"
# Dask's malloc trim threshold removed from the nanny's pre-spawn environment (mltf_flow.clusters.worker_env).
TRIM_EXPORT = """export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"MALLOC_TRIM_THRESHOLD_": None}'"""
GPU4 = {
    "extends": "slurm",
    "partition": "gpu",
    "account": "hep",
    "qos": "high",
    "cores": 16,
    "memory": "64GB",
    "gpus_per_node": 4,
    "walltime": "02:00:00",
    "lifetime": "110m",
    "lifetime_stagger": "5m",
    "prologue": ["module load cuda", QUOTED_EXPORT],
    "extra_directives": ["--exclusive", "--constraint=a6000"],
}


def profile_from(write: WriteCwd, name: str, settings: dict[str, object]) -> Profile:
    write({name: settings})
    return get_profile(name)


def worker_command(script: str) -> list[str]:
    """The dask worker command line of a rendered script, split the way bash splits it."""
    lines = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    assert len(lines) == 1, script
    return shlex.split(lines[0])


# --------------------------------------------------------------------------------------------- kwargs (pure)


def test_gpu_profile_kwargs(tmp_path: Path, write_profiles: WriteCwd) -> None:
    kwargs = slurm_cluster_kwargs(profile_from(write_profiles, "g4", GPU4), tmp_path / "logs")
    assert kwargs["processes"] == 4
    assert kwargs["cores"] == 16
    assert kwargs["memory"] == "64GB"
    assert (kwargs["queue"], kwargs["account"], kwargs["walltime"]) == ("gpu", "hep", "02:00:00")
    assert kwargs["job_name"] == "mltf-worker"
    assert kwargs["job_extra_directives"] == ["--gres=gpu:4", "--qos=high", "--exclusive", "--constraint=a6000"]
    assert kwargs["worker_extra_args"] == [
        "--resources", "GPU=1", "--preload", "mltf_flow.clusters.gpu_pin",
        "--lifetime", "110m", "--lifetime-stagger", "5m",
    ]  # fmt: skip
    assert kwargs["job_script_prologue"] == [
        "module load cuda",
        QUOTED_EXPORT,
        "export DASK_DISTRIBUTED__WORKER__DAEMON=False",
        TRIM_EXPORT,
        "export MLTF_WORKERS_PER_JOB=4",
        "export MLTF_GPUS_PER_JOB=4",
        "export CUDA_DEVICE_ORDER=PCI_BUS_ID",
    ]
    assert kwargs["python"] == sys.executable
    assert kwargs["log_directory"] == str(tmp_path / "logs")
    assert kwargs["death_timeout"] == 60
    assert kwargs["scheduler_options"] == {"dashboard_address": "127.0.0.1:8787"}


def test_gpus_per_node_directive(tmp_path: Path, write_profiles: WriteCwd) -> None:
    profile = profile_from(write_profiles, "g4", {**GPU4, "gpu_directive": "gpus-per-node"})
    directives = slurm_cluster_kwargs(profile, tmp_path)["job_extra_directives"]
    assert directives[0] == "--gpus-per-node=4"
    assert not any(d.startswith("--gres") for d in directives)


def test_cpu_profile_kwargs(tmp_path: Path, write_profiles: WriteCwd) -> None:
    profile = profile_from(
        write_profiles, "cpu", {"extends": "slurm", "cores": 8, "processes": 2, "lifetime": "55m"}
    )
    kwargs = slurm_cluster_kwargs(profile, tmp_path)
    assert kwargs["processes"] == 2
    assert kwargs["job_extra_directives"] == []
    assert kwargs["worker_extra_args"] == ["--lifetime", "55m"]
    assert kwargs["job_script_prologue"] == [
        "export DASK_DISTRIBUTED__WORKER__DAEMON=False",
        TRIM_EXPORT,
        "export MLTF_WORKERS_PER_JOB=2",
    ]
    assert kwargs["queue"] is None
    assert kwargs["account"] is None


def test_stagger_without_lifetime_adds_nothing(tmp_path: Path, write_profiles: WriteCwd) -> None:
    profile = profile_from(write_profiles, "st", {"extends": "slurm", "lifetime_stagger": "4m"})
    assert slurm_cluster_kwargs(profile, tmp_path)["worker_extra_args"] == []


def test_explicit_python_and_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_profiles: WriteCwd
) -> None:
    monkeypatch.setenv("USER", "alice")
    profile = profile_from(
        write_profiles,
        "dirs",
        {
            "extends": "slurm",
            "python": "/opt/env/bin/python",
            "log_directory": "~/slurm-logs",
            "local_directory": "/scratch/$USER/dask",
            "interface": "ib0",
        },
    )
    kwargs = slurm_cluster_kwargs(profile, tmp_path / "default-logs")
    assert kwargs["python"] == "/opt/env/bin/python"
    assert kwargs["log_directory"] == str(tmp_path / "slurm-logs")  # HOME is tmp_path
    assert kwargs["local_directory"] == "/scratch/alice/dask"
    assert kwargs["interface"] == "ib0"


def test_local_profile_has_no_slurm_kwargs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'local' is of kind 'local', not slurm"):
        slurm_cluster_kwargs(get_profile("local"), tmp_path)


# --------------------------------------------------------------------------------------------- rendered script


def test_rendered_gpu_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_profiles: WriteCwd) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "supersecret")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-9f3k2")
    profile = profile_from(write_profiles, "g4", GPU4)
    logs = tmp_path / "logs"
    script = render_job_script(profile, logs)

    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in (
        "#SBATCH -p gpu",
        "#SBATCH -A hep",
        "#SBATCH -t 02:00:00",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --gres=gpu:4",
        "#SBATCH --qos=high",
        "#SBATCH --exclusive",
        "#SBATCH --constraint=a6000",
        "#SBATCH -J mltf-worker",
    ):
        assert directive in lines, directive
    assert f"#SBATCH -e {logs}/mltf-worker-%J.err" in lines
    assert logs.is_dir()
    # user prologue first, verbatim (quotes intact), then the exports, then the worker command
    assert QUOTED_EXPORT in lines
    order = [
        lines.index("module load cuda"),
        lines.index(QUOTED_EXPORT),
        lines.index("export DASK_DISTRIBUTED__WORKER__DAEMON=False"),
        lines.index("export MLTF_WORKERS_PER_JOB=4"),
        lines.index("export MLTF_GPUS_PER_JOB=4"),
        next(i for i, line in enumerate(lines) if "distributed.cli.dask_worker" in line),
    ]
    assert order == sorted(order)

    command = worker_command(script)
    assert command[0] == sys.executable
    joined = " ".join(command)
    for fragment in (
        "--nworkers 4",
        "--nthreads 4",
        "--resources GPU=1",
        "--preload mltf_flow.clusters.gpu_pin",
        "--lifetime 110m",
        "--lifetime-stagger 5m",
        "--death-timeout 60",
    ):
        assert fragment in joined, fragment
    assert "supersecret" not in script
    assert "pw-9f3k2" not in script


def test_spaced_lifetime_is_refused_where_it_is_written(write_profiles: WriteCwd) -> None:
    # Rendered unquoted, "55 minutes" would reach dask-worker as `--lifetime 55` plus a stray `minutes`
    # argument: the loader refuses it, naming the file, the profile, the key and the form to use.
    path = write_profiles({"spaced": {"extends": "slurm", "lifetime": "55 minutes"}})
    with pytest.raises(ConfigError, match=r"no space") as info:
        get_profile("spaced")
    message = str(info.value)
    assert str(path.resolve()) in message
    assert "profile 'spaced', key 'lifetime'" in message
    assert "'55 minutes'" in message and "'55m'" in message


@pytest.mark.parametrize("lifetime", ["55m", "3000s", "0.75h"])
def test_lifetime_is_one_worker_argument(tmp_path: Path, write_profiles: WriteCwd, lifetime: str) -> None:
    write_profiles({"timed": {"extends": "slurm", "lifetime": lifetime, "lifetime_stagger": "4m"}})
    command = worker_command(render_job_script(get_profile("timed"), tmp_path / "logs"))
    i = command.index("--lifetime")
    assert command[i + 1] == lifetime
    assert parse_timedelta(command[i + 1]) == parse_timedelta(lifetime)
    assert command[i + 2:i + 4] == ["--lifetime-stagger", "4m"], command[i:]


# --------------------------------------------------------------------------------------------- preflight


def test_preflight_without_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ConfigError, match="sbatch") as info:
        preflight(get_profile("slurm"), "#!/usr/bin/env bash\n")
    assert not isinstance(info.value, SlurmRejected)
    assert "'slurm'" in str(info.value)


# --------------------------------------------------------------------------------------------- job ids
