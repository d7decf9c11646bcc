"""The backend config of ``mlflow run --backend mltf`` (mltf_flow.backend.config.parse_backend_config):
mlflow-slurm's keys, our own keys and MLflow's injected ones; what is refused and how the message reads;
profiles as the base (shipped ``slurm``/``local``, the repository's configs/profiles.yaml) with explicit keys
over them; memory conversion, GPU counting, task counts, the resource directives and the pre-timeout signal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mltf_flow.backend.config import (
    MLFLOW_KEYS,
    BackendConfig,
    gres_gpus,
    load_backend_config_file,
    parse_backend_config,
    profile_memory_to_slurm,
)
from mltf_flow.errors import ConfigError
from tests.helpers import REPO_PROFILES, SHIPPED_PROFILES, isolate_profiles

A6000 = f"profile 'mltf-a6000' ({REPO_PROFILES})"
SHIPPED_SLURM = f"profile 'slurm' ({SHIPPED_PROFILES})"


@pytest.fixture(autouse=True)
def _profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_profiles(tmp_path, monkeypatch, REPO_PROFILES)


def parse(raw: dict[str, Any] | None, **kwargs: Any) -> BackendConfig:
    return parse_backend_config(raw, **kwargs)


def extra_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profiles: dict[str, Any]) -> None:
    """Profiles of a test, read after the repository's."""
    path = tmp_path / "test-profiles.yaml"
    path.write_text(yaml.safe_dump(profiles))
    monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", f"{REPO_PROFILES}:{path}")


# ---------------------------------------------------------------------------------------- the base


def test_default_base_is_the_shipped_slurm_profile(tmp_path: Path) -> None:
    config = parse(None)
    assert config.profile == "slurm"
    assert config.directives() == ["--time=01:00:00", "--nodes=1", "--ntasks=1", "--cpus-per-task=1",
                                   "--mem=3815M"]
    assert config.python == sys.executable
    # Under the settings' work_dir (the conftest points it at tmp_path/work), never the current directory.
    assert config.job_dir == tmp_path / "work" / "jobs"
    assert config.env_root == Path("~/.mlflow/envs").expanduser()
    assert config.source_of("mem") == SHIPPED_SLURM
    assert config.source_of("exclusive") == "defaults"
    assert parse({}) == config


def test_default_base_is_the_configured_profile_when_it_is_a_slurm_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_PROFILE", "slurm-ci")
    config = parse({})
    assert (config.profile, config.partition, config.time, config.mem) == ("slurm-ci", "debug", "00:30:00", "954M")
    monkeypatch.setenv("MLTF_FLOW_PROFILE", "local")
    assert parse({}).profile == "slurm"


def test_local_profile_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse({"profile": "local"})
    message = str(err.value)
    assert "profile 'local' is a local profile" in message
    assert "submits SLURM jobs" in message
    assert message.startswith("--backend-config:")


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="no profile 'nosuch'"):
        parse({"profile": "nosuch"})


def test_a6000_profile_values_are_taken() -> None:
    config = parse({"profile": "mltf-a6000"})
    assert (config.profile, config.partition, config.account, config.cpus_per_task, config.time) == (
        "mltf-a6000", "mltf", "mltf_users", 16, "04:00:00")
    assert config.mem == "190735M"  # 200GB in MiB, rounded up
    assert config.gpu_count == 4
    assert config.interface == "ib0"
    assert config.prologue == ("module load cuda 2>/dev/null || true",)
    assert config.directives() == ["--partition=mltf", "--account=mltf_users", "--time=04:00:00", "--nodes=1",
                                   "--ntasks=1", "--cpus-per-task=16", "--mem=190735M", "--gres=gpu:4",
                                   "--exclusive"]
    for key in ("partition", "account", "cpus_per_task", "mem", "gpus_per_node", "extra_directives"):
        assert config.source_of(key) == A6000, key
    assert config.source_of("profile") == "--backend-config"


def test_explicit_keys_override_the_profile() -> None:
    config = parse({"profile": "mltf-a6000", "partition": "gpu-debug", "cpus_per_task": 4, "time": "00:20:00",
                    "mem": "32G", "gres": "gpu:a6000:2", "qos": "high"}, source="slurm_config.json")
    assert config.directives() == ["--partition=gpu-debug", "--account=mltf_users", "--qos=high", "--time=00:20:00",
                                   "--nodes=1", "--ntasks=1", "--cpus-per-task=4", "--mem=32G",
                                   "--gres=gpu:a6000:2", "--exclusive"]
    assert config.gpu_count == 2  # the config's gres replaces the profile's 4 GPUs
    for key in ("partition", "cpus_per_task", "time", "mem", "gres", "qos"):
        assert config.source_of(key) == "slurm_config.json", key
    assert config.source_of("account") == A6000
    assert "slurm_config.json" in set(config.sources.values())


def test_ci_profiles() -> None:
    assert parse({"profile": "slurm-ci"}).directives() == [
        "--partition=debug", "--time=00:30:00", "--nodes=1", "--ntasks=1", "--cpus-per-task=1", "--mem=954M"]
    gpu = parse({"profile": "slurm-ci-gpu"})
    assert gpu.directives()[-1] == "--gres=gpu:1"
    assert gpu.gpu_count == 1


# ------------------------------------------------------------------------------------ accepted keys


def test_mlflow_slurm_config_is_accepted_unchanged(tmp_path: Path) -> None:
    raw = {"partition": "debug", "account": "hep", "gpus_per_node": 2, "mem": "16G", "nodes": 1, "ntasks": 2,
           "time": "02:00:00", "modules": ["cuda/12.4", " gcc ", ""], "environment": ["FOO=bar", "PATH=$PATH:/opt/x"],
           "exports": ["HF_HOME", "WANDB_MODE"], "exclusive": True, "sbatch-script-file": "job.sh"}
    config = parse(raw)
    assert config.directives() == ["--partition=debug", "--account=hep", "--time=02:00:00", "--nodes=1",
                                   "--ntasks=2", "--cpus-per-task=1", "--mem=16G", "--gpus-per-node=2",
                                   "--exclusive"]
    assert config.modules == ("cuda/12.4", "gcc")
    assert config.environment == ("export FOO=bar", "export PATH=$PATH:/opt/x")
    assert config.exports == ("HF_HOME", "WANDB_MODE")
    assert config.script_file == tmp_path / "job.sh"
    assert config.tasks == 2


def test_own_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBS_HOME", str(tmp_path / "shared"))
    config = parse({"qos": "long", "cpus_per_task": 8, "constraint": "a100", "extra_directives": ["--reservation=r1"],
                    "job_name": "train", "job_dir": "$JOBS_HOME/jobs", "env_root": "envs", "python": sys.executable,
                    "pre_timeout_signal": 300, "forward_pre_timeout_signal": True, "kill_grace": 5,
                    "poll_interval": 1.5, "max_poll_interval": 10, "system_metrics": False, "run_id": "abc123"})
    assert config.directives() == ["--qos=long", "--time=01:00:00", "--nodes=1", "--ntasks=1", "--cpus-per-task=8",
                                   "--mem=3815M", "--constraint=a100", "--reservation=r1"]
    assert config.job_dir == tmp_path / "shared" / "jobs"
    assert config.env_root == tmp_path / "envs"
    assert (config.job_name, config.run_id, config.signal_seconds) == ("train", "abc123", 300)
    assert (config.kill_grace, config.poll_interval, config.max_poll_interval) == (5.0, 1.5, 10.0)
    assert config.forward_pre_timeout_signal is True and config.system_metrics is False


def test_mlflows_keys_are_accepted_silently() -> None:
    raw = {"ENV_MANAGER": "virtualenv", "SYNCHRONOUS": False, "DOCKER_ARGS": {}, "STORAGE_DIR": "/tmp/storage",
           "build_image": False, "docker_auth": None, "_mlflow_local_backend_run_id": "r1"}
    assert set(raw) == set(MLFLOW_KEYS)
    config = parse(raw)
    assert (config.env_manager, config.storage_dir) == ("virtualenv", "/tmp/storage")
    assert not set(MLFLOW_KEYS) & set(config.sources)
    assert config.directives() == parse({}).directives()


def test_default_job_dir_follows_the_work_dir(tmp_path: Path) -> None:
    assert parse({}, work_dir=tmp_path / "w").job_dir == tmp_path / "w" / "jobs"


def test_env_root_follows_mlflow_env_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENV_ROOT", str(tmp_path / "envs"))
    assert parse({}).env_root == tmp_path / "envs"


# ---------------------------------------------------------------------------------------- refused


def test_unknown_key_has_a_hint() -> None:
    with pytest.raises(ConfigError) as err:
        parse({"partiton": "debug", "gpus-per-node": 2})
    message = str(err.value)
    assert "'partiton' (did you mean 'partition'?)" in message
    assert "'gpus-per-node' (did you mean 'gpus_per_node'?)" in message
    assert "Known keys:" in message


def test_unknown_key_without_a_close_match() -> None:
    with pytest.raises(ConfigError, match="unknown key") as err:
        parse({"zzzzzz": 1}, source="cfg.json")
    assert "did you mean" not in str(err.value)
    assert str(err.value).startswith("cfg.json: ")


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a JSON object of settings, found list"):
        parse_backend_config(["partition"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("partition", 5),
        ("partition", "a\nb"),
        ("account", ["hep"]),
        ("nodes", 0),
        ("nodes", True),
        ("nodes", "2"),
        ("ntasks", 0),
        ("cpus_per_task", 1.5),
        ("gpus_per_node", -1),
        ("exclusive", "yes"),
        ("system_metrics", 1),
        ("modules", "cuda"),
        ("modules", ["cuda", 3]),
        ("kill_grace", 0),
        ("poll_interval", -1),
        ("max_poll_interval", True),
        ("pre_timeout_signal", -5),
        ("mem", "lots"),
        ("mem", True),
        ("mem", -4),
        ("time", "1 hour"),
        ("time", True),
        ("time", -5),
        ("time", 1.5),
        ("time", "00:30:00:00"),
        ("exports", 5),
        ("job_dir", ""),
        ("python", 3),
        ("environment", 5),
        ("extra_directives", "--exclusive"),
        ("extra_directives", ["exclusive"]),
    ],
)
def test_type_errors_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        parse({key: value})


def test_exports_must_be_variable_names() -> None:
    with pytest.raises(ConfigError, match="'1BAD', 'A-B' are not variable names"):
        parse({"exports": ["OK", "1BAD", "A-B"]})
    assert parse({"exports": "HF_HOME, WANDB_MODE"}).exports == ("HF_HOME", "WANDB_MODE")


def test_missing_python_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as err:
        parse({"python": str(tmp_path / "nope" / "python")})
    assert str(tmp_path / "nope" / "python") in str(err.value)


def test_poll_intervals_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="max_poll_interval must be >= poll_interval"):
        parse({"poll_interval": 5, "max_poll_interval": 1})
    with pytest.raises(ConfigError, match="max_poll_interval must be >= poll_interval"):
        parse({"poll_interval": 60})  # over the default maximum of 30 s


# ------------------------------------------------------------------------------------- environment


SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize("name", ["MLFLOW_TRACKING_PASSWORD", "API_TOKEN", "AWS_SECRET_ACCESS_KEY", "hf_token",
                                  "OPENAI_API_KEY", "DB_PASSWD"])
@pytest.mark.parametrize("style", ["list", "mapping"])
def test_secret_environment_is_refused_without_showing_the_value(name: str, style: str) -> None:
    value: Any = [f"{name}={SECRET}"] if style == "list" else {name: SECRET}
    with pytest.raises(ConfigError) as err:
        parse({"environment": value})
    message = str(err.value)
    assert f"key 'environment' sets {name}, which looks like a secret" in message
    assert "exports" in message
    assert SECRET not in message


@pytest.mark.parametrize("value", [f"MLFLOW_TRACKING_PASSWORD={SECRET}", [f"MLFLOW_TRACKING_PASSWORD={SECRET}", 7],
                                   [f"TOKEN {SECRET}"], {f"BAD NAME {SECRET}": "x"}])
def test_malformed_environment_does_not_show_values(value: Any) -> None:
    with pytest.raises(ConfigError, match="key 'environment'") as err:
        parse({"environment": value})
    if not isinstance(value, dict):  # a mapping's names are shown (they are names, not values)
        assert SECRET not in str(err.value)


def test_environment_styles() -> None:
    assert parse({"environment": {"GREETING": "hello world", "N": 3}}).environment == (
        "export GREETING='hello world'", "export N=3")
    # mlflow-slurm's list is written as given, so $VARIABLES expand in the job.
    assert parse({"environment": ["PATH=$PATH:/opt/bin", "EMPTY="]}).environment == (
        "export PATH=$PATH:/opt/bin", "export EMPTY=")


@pytest.mark.parametrize("value", [["1X=2"], ["NO_EQUALS"], {"A": "two\nlines"}, {"A-B": "1"}])
def test_bad_environment_entries(value: Any) -> None:
    with pytest.raises(ConfigError, match="environment"):
        parse({"environment": value})


# -------------------------------------------------------------------------------- extra directives


@pytest.mark.parametrize("line", ["--output=/tmp/x.log", "--output /tmp/x.log", "-o /tmp/x.log", "--error=/tmp/e",
                                  "-e /tmp/e", "--chdir=/tmp", "-D /tmp", "--export=NONE", "--signal=B:USR1@60",
                                  "--job-name=other", "-J other", "--open-mode=truncate", "--parsable"])
def test_directives_the_backend_writes_are_refused(line: str) -> None:
    option = line.split("=")[0].split(" ")[0]
    with pytest.raises(ConfigError, match=f"{option} is set by the mltf backend itself"):
        parse({"extra_directives": ["--reservation=r1", line]})


@pytest.mark.parametrize("line", ["-o/tmp/elsewhere-%j.out", "--out=/tmp/elsewhere-%j.out", "-D/tmp"])
def test_other_spellings_of_own_directives_are_refused(line: str) -> None:
    with pytest.raises(ConfigError, match="is set by the mltf backend itself"):
        parse({"extra_directives": [line]})


def test_a_profiles_extra_directives_are_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra_profiles(tmp_path, monkeypatch, {"moved-log": {"extends": "slurm-ci",
                                                         "extra_directives": ["--output=/tmp/elsewhere-%j.out"]}})
    with pytest.raises(ConfigError, match="--output is set by the mltf backend itself"):
        parse({"profile": "moved-log"})


def test_extra_directives_are_kept_in_order() -> None:
    config = parse({"extra_directives": ["--reservation=r1", " --constraint=a6000 ", "--mail-type=END"]})
    assert config.directives()[-3:] == ["--reservation=r1", "--constraint=a6000", "--mail-type=END"]


# ---------------------------------------------------------------------------------------------- GPUs


def test_gres_and_gpus_per_node_together_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"both 'gres' \('gpu:2'\) and 'gpus_per_node' ask for GPUs"):
        parse({"gres": "gpu:2", "gpus_per_node": 2})
    with pytest.raises(ConfigError, match="both 'gres'"):
        parse({"gres": "gpu:a100:1,shard:2", "gpus_per_node": 1})


def test_gres_with_zero_gpus_per_node() -> None:
    config = parse({"gres": "gpu:2", "gpus_per_node": 0})
    assert config.directives()[-1] == "--gres=gpu:2"
    assert config.gpu_count == 2


def test_non_gpu_gres_keeps_the_gpu_request() -> None:
    config = parse({"gres": "shard:4", "gpus_per_node": 2})
    assert "--gres=shard:4" in config.directives()
    assert "--gpus-per-node=2" in config.directives()


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("gpu:a100:2", 2), ("gpu:2", 2), ("gpu", 1), ("gpu:a100", 1), ("shard:4", 0), ("gpu:a100:2,shard:4", 2),
     ("gpu:1, gpu:tesla:2", 3), ("", 0), ("mps:100", 0)],
)
def test_gres_gpus(gres: str, gpus: int) -> None:
    assert gres_gpus(gres) == gpus
    assert BackendConfig(profile="p", gres=gres or None).gpu_count == gpus


def test_gpus_per_node_key_writes_mlflow_slurms_directive() -> None:
    assert parse({"gpus_per_node": 3}).directives()[-1] == "--gpus-per-node=3"
    assert parse({"profile": "slurm-ci-gpu", "gpus_per_node": 3}).directives()[-1] == "--gpus-per-node=3"


def test_config_gres_with_gpus_replaces_the_profiles_gpus() -> None:
    config = parse({"profile": "slurm-ci-gpu", "gres": "gpu:2"})
    assert config.gpu_count == 2
    assert config.directives()[-1] == "--gres=gpu:2"


def test_config_gres_without_gpus_keeps_the_profiles_gpus() -> None:
    config = parse({"profile": "slurm-ci-gpu", "gres": "shard:2"})
    assert config.gpu_count == 1
    assert config.directives()[-1] == "--gres=shard:2,gpu:1"  # one --gres line: sbatch keeps only the last


# ------------------------------------------------------------------------------------ tasks, layout


@pytest.mark.parametrize(
    ("fields", "tasks"),
    [
        ({}, 1),
        ({"ntasks": 3}, 3),
        ({"ntasks": 3, "nodes": 2, "gpus_per_node": 4}, 3),
        ({"nodes": 1, "gpus_per_node": 4}, 1),
        ({"nodes": 2}, 2),
        ({"nodes": 2, "gpus_per_node": 4}, 8),
        ({"nodes": 3, "gres": "gpu:a100:2"}, 6),
        ({"nodes": 2, "gres": "shard:4"}, 2),
    ],
)
def test_tasks(fields: dict[str, Any], tasks: int) -> None:
    assert BackendConfig(profile="p", **fields).tasks == tasks


def test_multi_node_directives() -> None:
    config = parse({"nodes": 2, "gpus_per_node": 2})
    assert config.directives() == ["--time=01:00:00", "--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1",
                                   "--mem=3815M", "--gpus-per-node=2"]
    assert config.tasks == 4
    assert parse({"nodes": 2, "ntasks": 6}).directives()[1:3] == ["--nodes=2", "--ntasks=6"]


def test_fewer_tasks_than_nodes_is_refused() -> None:
    with pytest.raises(ConfigError, match="ntasks=2 is fewer than nodes=3"):
        parse({"nodes": 3, "ntasks": 2})


def test_one_task_on_two_nodes_is_refused() -> None:
    with pytest.raises(ConfigError, match="ntasks=1 is fewer than nodes=2"):
        parse({"nodes": 2, "ntasks": 1})


def test_directives_full_order() -> None:
    config = BackendConfig(profile="p", partition="gpu", account="hep", qos="high", time="02:00:00", mem="16G",
                           nodes=1, ntasks=None, cpus_per_task=8, gpus_per_node=2, gpu_directive="gres",
                           exclusive=True, constraint="a100", extra_directives=("--reservation=r",))
    assert config.directives() == ["--partition=gpu", "--account=hep", "--qos=high", "--time=02:00:00",
                                   "--nodes=1", "--ntasks=1", "--cpus-per-task=8", "--mem=16G", "--gres=gpu:2",
                                   "--exclusive", "--constraint=a100", "--reservation=r"]


# ------------------------------------------------------------------------------ time and the signal


@pytest.mark.parametrize(
    ("value", "written", "signal"),
    [
        ("00:30:00", "00:30:00", 120),
        ("01:00:00", "01:00:00", 120),
        ("00:10:00", "00:10:00", 60),
        ("00:05:00", "00:05:00", 30),
        ("00:00:30", "00:00:30", 10),
        ("1-00:00:00", "1-00:00:00", 120),
        ("1-12", "1-12", 120),
        ("45:00", "45:00", 120),
        ("30", "30", 120),
        (90, "90", 120),
        (3, "3", 18),
    ],
)
def test_time_and_signal(value: Any, written: str, signal: int) -> None:
    config = parse({"time": value})
    assert config.time == written
    assert f"--time={written}" in config.directives()
    assert config.signal_seconds == signal


def test_explicit_signal() -> None:
    assert parse({"time": "00:05:00", "pre_timeout_signal": 200}).signal_seconds == 200
    assert parse({"pre_timeout_signal": 0}).signal_seconds == 0


# ---------------------------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("value", "slurm"),
    [("4GB", "3815M"), ("16GiB", "16384M"), ("1GB", "954M"), ("200GB", "190735M"), ("512MiB", "512M"),
     ("1.5GB", "1431M"), ("1 GB", "954M"), ("100B", "1M"), ("2KiB", "1M"), ("1TiB", "1048576M")],
)
def test_profile_memory_to_slurm(value: str, slurm: str) -> None:
    assert profile_memory_to_slurm(value) == slurm


@pytest.mark.parametrize("value", ["4", "four GB", "4XB", ""])
def test_profile_memory_to_slurm_refuses(value: str) -> None:
    with pytest.raises(ConfigError, match="expected a size like"):
        profile_memory_to_slurm(value)


@pytest.mark.parametrize("value", ["4gb", "16gib"])
def test_lower_case_profile_memory(value: str) -> None:
    assert profile_memory_to_slurm(value) == {"4gb": "3815M", "16gib": "16384M"}[value]


def test_profile_memory_in_lower_case_is_a_valid_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile loader takes '8gb' (so the Dask side works); what the backend then does is pinned above."""
    from mltf_flow.clusters.profiles import get_profile

    extra_profiles(tmp_path, monkeypatch, {"lower": {"extends": "slurm-ci", "memory": "8gb"}})
    assert get_profile("lower").memory == "8gb"


def test_lower_case_profile_memory_as_the_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra_profiles(tmp_path, monkeypatch, {"lower": {"extends": "slurm-ci", "memory": "8gb"}})
    assert parse({"profile": "lower"}).mem == "7630M"


@pytest.mark.parametrize(("value", "written"), [(4000, "4000M"), ("16G", "16G"), ("16g", "16G"), ("512m", "512M"),
                                                ("2048", "2048")])
def test_mem_key(value: Any, written: str) -> None:
    config = parse({"mem": value})
    assert config.mem == written
    assert config.source_of("mem") == "--backend-config"


# ------------------------------------------------------------------------------------------ the file


def test_load_backend_config_file(tmp_path: Path) -> None:
    path = tmp_path / "slurm_config.json"
    path.write_text('{"partition": "debug", "time": 30}')
    assert load_backend_config_file(path) == {"partition": "debug", "time": 30}
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_backend_config_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_backend_config_file(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_backend_config_file(tmp_path / "missing.json")
