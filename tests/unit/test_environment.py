"""Choosing a step's environment like `mlflow run --env-manager`, and what enters the key."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mltf_flow.config import load_settings
from mltf_flow.environment import StepEnvironment, choose_manager, prepare
from mltf_flow.errors import ConfigError
from mltf_flow.mlproject import read_project

MLPROJECT = "name: p\nentry_points:\n  main:\n    command: python main.py\n"


def project(tmp_path: Path, extra: str = "", files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "proj"
    root.mkdir(parents=True)
    (root / "MLproject").write_text(MLPROJECT + extra)
    (root / "main.py").write_text("print('hi')\n")
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    return root


def test_default_is_mlflows_for_declared_environments(tmp_path: Path) -> None:
    plain = read_project(project(tmp_path / "a"))
    assert choose_manager(plain, None) == "local"  # declares nothing: this interpreter
    py = read_project(project(tmp_path / "b", files={"python_env.yaml": "python: '3.11'\ndependencies: []\n"}))
    assert choose_manager(py, None) == "virtualenv"
    assert choose_manager(py, "local") == "local"


def test_docker_env_is_refused_with_what_to_do(tmp_path: Path) -> None:
    docker = read_project(project(tmp_path, "docker_env:\n  image: python:3.11\n"))
    for wanted in (None, "local", "virtualenv"):
        with pytest.raises(ConfigError, match=r"docker_env projects cannot run under mltf_flow.*python_env.yaml"):
            choose_manager(docker, wanted)


@pytest.mark.skipif(shutil.which("conda") is not None, reason="conda exists here: the error path cannot happen")
def test_conda_project_without_conda_names_env_manager(tmp_path: Path) -> None:
    conda = read_project(project(tmp_path, files={"conda.yaml": "name: x\ndependencies: [python=3.11]\n"}))
    with pytest.raises(ConfigError, match=r"no `conda` command.*--env-manager local"):
        choose_manager(conda, None)
    assert choose_manager(conda, "local") == "local"
    with pytest.raises(ConfigError, match=r"cannot be built with --env-manager virtualenv"):
        choose_manager(conda, "virtualenv")


def test_unknown_manager(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'pipenv' is not one of local, virtualenv, uv, conda"):
        choose_manager(read_project(project(tmp_path)), "pipenv")


def test_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_ENV_MANAGER", "venv")
    with pytest.raises(ConfigError, match=r"env_manager='venv'.*MLTF_FLOW_ENV_MANAGER"):
        load_settings()
    monkeypatch.setenv("MLTF_FLOW_ENV_MANAGER", "uv")
    monkeypatch.setenv("MLTF_FLOW_ENV_ROOT", "/tmp/some/envs")
    settings = load_settings()
    assert (settings.env_manager, settings.env_root) == ("uv", Path("/tmp/some/envs"))


def test_key_local_is_the_declaration_built_adds_manager_and_packages(tmp_path: Path) -> None:
    local = prepare(read_project(project(tmp_path)), "local", tmp_path / "envs", log=print)
    assert local.prefix is None and local.key() == read_project(tmp_path / "proj").env_hash()
    built = StepEnvironment("virtualenv", tmp_path, "a==1\n", local.declared)
    assert built.key() != local.key()
    assert StepEnvironment("virtualenv", tmp_path, "a==2\n", local.declared).key() != built.key()
    assert StepEnvironment("uv", tmp_path, "a==1\n", local.declared).key() != built.key()


def test_command_env_puts_the_environment_first(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "PYTHONHOME": "/x"}
    built = StepEnvironment("virtualenv", tmp_path / "env", "", "d").command_env(base, tmp_path / "pylib")
    assert built["PATH"].split(os.pathsep)[0] == str(tmp_path / "env" / "bin")
    assert built["VIRTUAL_ENV"] == str(tmp_path / "env") and "PYTHONHOME" not in built
    assert built["PYTHONPATH"] == str(tmp_path / "pylib")
    local = StepEnvironment("local", None, "", "d").command_env(base, None)
    assert "VIRTUAL_ENV" not in local and local["PATH"].endswith("/usr/bin")
