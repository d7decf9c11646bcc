"""The job-side environment builder: Python lookup on the node, a cached virtualenv from python_env.yaml,
reuse, and recovery from a build that was interrupted. Real `python -m venv` and pip (a local wheel, no index)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from mltf_flow.errors import ConfigError, EnvBuildError
from mltf_flow.pyenv import PythonEnv, ensure_env, find_python, read_python_env
from tests.helpers import make_wheel

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_finds_this_python_for_its_version() -> None:
    path, version = find_python(HERE)
    assert version.startswith(HERE + ".")
    out = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert out.stdout.strip() == str(sys.version_info[:2])


def test_a_python_the_node_lacks_is_a_clear_error() -> None:
    with pytest.raises(EnvBuildError, match=r"Python 2\.6") as info:
        find_python("2.6")
    assert "--env-manager local" in str(info.value) and "looked at" in str(info.value)


def test_python_env_yaml_is_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "python_env.yaml"
    good.write_text('python: "3.11"\nbuild_dependencies: [pip]\ndependencies: ["numpy>=2", "-r req.txt"]\n')
    assert read_python_env(good) == PythonEnv("3.11", ("pip",), ("numpy>=2", "-r req.txt"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("python: '3.11'\ndeps: [numpy]\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['deps'\]; python_env.yaml has python, ") as info:
        read_python_env(bad)
    assert str(bad) in str(info.value)  # where the bad key is


def _probe(tmp_path: Path) -> Path:
    return make_wheel(tmp_path / "wheels", "mltf_envprobe", "1.0", "ANSWER = 42\n")


def test_builds_once_then_reuses(tmp_path: Path) -> None:
    spec = PythonEnv(HERE, dependencies=(str(_probe(tmp_path)),))
    log: list[str] = []
    env = ensure_env(spec, "a" * 64, tmp_path / "envs", tmp_path, log=log.append)
    assert env.parent == tmp_path / "envs" and env.name.startswith("mltf-")
    assert f"-{platform.machine()}-py{HERE}." in env.name  # never shared across architectures or Pythons
    out = subprocess.run([str(env / "bin" / "python"), "-c", "import mltf_envprobe, sys; print(mltf_envprobe.ANSWER, "
                          "sys.prefix)"], capture_output=True, text=True)
    assert out.stdout.split() == ["42", str(env)], out.stderr
    assert any("building environment" in line for line in log)
    marker = env / ".mltf-env-complete"
    stamp = marker.stat().st_mtime_ns
    again: list[str] = []
    assert ensure_env(spec, "a" * 64, tmp_path / "envs", tmp_path, log=again.append) == env
    assert any("reusing environment" in line for line in again) and marker.stat().st_mtime_ns == stamp


def test_an_interrupted_build_is_removed_and_redone(tmp_path: Path) -> None:
    spec = PythonEnv(HERE)
    env = ensure_env(spec, "c" * 64, tmp_path / "envs", tmp_path, log=lambda _: None)
    (env / ".mltf-env-complete").unlink()  # as if the job was killed before the build finished
    (env / "half-written").write_text("x")
    log: list[str] = []
    assert ensure_env(spec, "c" * 64, tmp_path / "envs", tmp_path, log=log.append) == env
    assert any("incomplete" in line for line in log)
    assert not (env / "half-written").exists() and (env / ".mltf-env-complete").exists()


def test_a_failing_install_leaves_no_environment(tmp_path: Path) -> None:
    spec = PythonEnv(HERE, dependencies=(str(tmp_path / "missing-1.0-py3-none-any.whl"),))
    with pytest.raises(EnvBuildError, match="installing dependencies failed"):
        ensure_env(spec, "d" * 64, tmp_path / "envs", tmp_path, log=lambda _: None)
    assert [p.name for p in (tmp_path / "envs").iterdir() if not p.name.startswith(".")] == []
