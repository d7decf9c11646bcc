"""Planning a backend job (mltf_flow.backend.submit.plan_job): everything checked before a run or a job exists.
No SLURM is needed for planning; the pre-flight and submission are in tests/integration/test_mlflow_backend.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.backend.submit import JobPlan, check_tracking_uri, plan_job
from mltf_flow.errors import ConfigError, ParameterError
from tests.helpers import REPO

FLAKY = REPO / "tests" / "integration" / "projects" / "flaky"
STORE = "sqlite:////tmp/never-opened/mlflow.db"


def plan(project: Path | str = FLAKY, params: dict[str, Any] | None = None, entry_point: str = "main",
         **config: Any) -> JobPlan:
    config.setdefault("ENV_MANAGER", "local")
    return plan_job(str(project), entry_point, params or {}, None, config, STORE, "0")


def test_secret_parameters_travel_in_the_environment_only(tmp_path: Path) -> None:
    secret = "tok-9d1f0b"
    job = plan(params={"mode": "ok", "api_token": secret})
    assert '--api-token @@MLTF_SECRET_API_TOKEN@@' in job.command and secret not in job.command
    assert job.secrets == {"MLTF_SECRET_API_TOKEN": secret}
    assert job.display_command.endswith("--api-token ***")
    assert job.params["api_token"] == "<secret>"
    spec = job.spec("r" * 32)
    script = job.script("r" * 32)
    spec.write(tmp_path / "spec.json")  # as the job reads it
    written = (tmp_path / "spec.json").read_text()
    assert secret not in written and secret not in script and secret not in json.dumps(job.tags)


def test_the_key_follows_parameters_and_tasks_but_not_tokens() -> None:
    base = plan(params={"mode": "ok"})
    assert plan(params={"mode": "ok"}).cache_key == base.cache_key
    assert plan(params={"mode": "exit3"}).cache_key != base.cache_key
    assert plan(params={"mode": "ok", "api_token": "other"}).cache_key == base.cache_key
    assert plan(params={"mode": "ok"}, ntasks=2).cache_key != base.cache_key  # world size changes results
    assert base.tags["mltf.cache_key"] == base.cache_key and base.tags["mltf.step"] == "main"


def test_parameters_are_checked_with_their_types(tmp_path: Path) -> None:
    project = tmp_path / "typed"
    project.mkdir()
    (project / "MLproject").write_text("name: typed\nentry_points:\n  main:\n    parameters:\n"
                                       "      epochs: {type: int, default: 3}\n    command: echo {epochs}\n")
    assert plan(project, {"epochs": "4"}).command == "echo 4"
    with pytest.raises(ParameterError, match=r"'epochs'.*not an integer"):
        plan(project, {"epochs": "many"})
    with pytest.raises(ConfigError, match="Could not find train among entry points"):
        plan(project, entry_point="train")


@pytest.mark.parametrize(("manager", "message"), [
    ("conda", "--env-manager conda is not supported"),
    ("uv", "--env-manager uv is not supported"),
])
def test_unsupported_environment_managers(manager: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan(ENV_MANAGER=manager)


def test_default_environment_manager_is_mlflows(tmp_path: Path) -> None:
    example = plan(REPO / "pipelines" / "jet_tagging", {"features": str(FLAKY / "step.py")}, "train",
                   ENV_MANAGER=None)
    assert example.env_manager == "virtualenv"
    assert example.python_env is not None and "torch==2.13.0" in example.python_env["dependencies"]
    bare = plan(ENV_MANAGER=None)  # no env file: MLflow's default env, this Python with mlflow
    assert bare.env_manager == "virtualenv" and bare.python_env is not None
    assert bare.python_env["dependencies"][0].startswith("mlflow==")


def test_docker_projects_are_refused(tmp_path: Path) -> None:
    project = tmp_path / "docker"
    project.mkdir()
    (project / "MLproject").write_text("name: d\ndocker_env: {image: python:3.11}\nentry_points:\n"
                                       "  main: {command: 'true'}\n")
    with pytest.raises(ConfigError, match="docker_env projects cannot run on SLURM nodes"):
        plan(project)


def test_tracking_uris_the_job_can_use() -> None:
    with pytest.raises(ConfigError, match="carries credentials") as info:
        check_tracking_uri("https://alice:hunter2@mlflow.example.org")
    assert "hunter2" not in str(info.value)
    relative = check_tracking_uri("sqlite:///mlflow.db")
    assert relative.startswith("sqlite:////") and relative.endswith("/mlflow.db")  # the job runs elsewhere
    with pytest.raises(ConfigError, match="file store"):
        check_tracking_uri("file:///tmp/mlruns")
    assert check_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_zipped_project_is_unpacked_where_the_nodes_can_read_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_WORK_DIR", str(tmp_path / "work"))
    archive = tmp_path / "flaky.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in FLAKY.iterdir():
            handle.write(path, path.name)
    job = plan(archive, {"mode": "ok"})
    root = job.project.root
    assert root.is_relative_to(tmp_path / "work" / "jobs" / "projects"), root  # not this machine's /tmp
    assert (root / "step.py").is_file() and job.spec("r" * 32).project_dir == str(root)
    shutil.rmtree(root)


def test_planning_stays_light() -> None:
    # MLflow imports the backend for `mlflow run --backend mltf`; planning must not pull in the Dask stack,
    # Luigi or torch (seconds each, on every submission).
    code = (
        "import sys, mlflow.projects\n"
        "import mltf_flow.backend.mlflow_backend\n"
        "from mltf_flow.backend.submit import plan_job\n"
        f"plan_job({str(FLAKY)!r}, 'main', {{}}, None, {{'ENV_MANAGER': 'local'}}, {STORE!r}, '0')\n"
        "heavy = sorted(m for m in ('luigi', 'dask', 'distributed', 'torch', 'dask_jobqueue') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
