"""A pipeline step's software environment, chosen like ``mlflow run --env-manager`` and built once.

Managers:

``local``       the interpreter mltf_flow runs in (first on PATH): what ``--env-manager local`` means to MLflow;
``virtualenv``  the project's ``python_env.yaml`` (or, without one, this Python with mlflow), built with
                ``venv`` + pip by :func:`mltf_flow.pyenv.ensure_env` (the builder the backend uses in jobs);
``uv``          the same declaration built with ``uv``;
``conda``       ``conda.yaml`` (``conda_env``), built with ``conda env create`` where a ``conda`` exists.

The default is MLflow's for a project that declares an environment (``python_env`` -> virtualenv,
``conda_env`` -> conda); a project that declares none runs ``local``. ``docker_env`` is refused until
containers land. A built environment lives under the env root (setting ``env_root``, else
``$MLFLOW_ENV_ROOT``, else ``~/.mlflow/envs``), named by its declaration, machine and Python, built under a
lock and reused; its resolved packages are recorded on the run (``mltf/environment.txt``) and are part of
the step's cache key (:meth:`StepEnvironment.key`), so a new resolution of an unpinned requirement reruns
the steps that use it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mltf_flow.errors import ConfigError, EnvBuildError
from mltf_flow.mlproject import Project

MANAGERS = ("local", "virtualenv", "uv", "conda")
_CONDA_MARKER = ".mltf-env-complete"


def default_env_root() -> Path:
    return Path(os.environ.get("MLFLOW_ENV_ROOT") or "~/.mlflow/envs").expanduser().absolute()


def choose_manager(project: Project, wanted: str | None) -> str:
    """The env manager for ``project`` (``wanted`` = --env-manager / setting; None = MLflow's default).

    Raises :class:`ConfigError` for what cannot work here, before anything runs."""
    where = project.mlproject_path or project.root
    if project.env_type == "docker_env":
        raise ConfigError(
            f"{where}: docker_env projects cannot run under mltf_flow yet (containers are not supported; "
            "Apptainer/Podman support is planned). Declare a python_env.yaml (or conda.yaml) instead, or run this "
            "project with `mlflow run` on a machine with Docker."
        )
    if wanted is not None and wanted not in MANAGERS:
        raise ConfigError(f"--env-manager {wanted!r} is not one of {', '.join(MANAGERS)}.")
    if wanted is None:
        wanted = {"conda_env": "conda", "python_env": "virtualenv"}.get(project.env_type or "", "local")
    if wanted == "conda":
        if project.env_type != "conda_env":
            raise ConfigError(f"{where}: --env-manager conda needs a conda.yaml (conda_env); this project declares "
                              f"{project.env_type or 'no environment'}. Use --env-manager local or virtualenv.")
        if _conda() is None:
            raise ConfigError(
                f"{where}: this project declares a conda environment ({_env_file(project)}), but no `conda` "
                "command is on PATH. Install conda (or mamba) on this machine, or run it in the current environment "
                "with --env-manager local (or declare a python_env.yaml and use --env-manager virtualenv)."
            )
    elif wanted in ("virtualenv", "uv") and project.env_type == "conda_env":
        raise ConfigError(f"{where}: a conda project cannot be built with --env-manager {wanted}; use --env-manager "
                          "conda (where conda exists) or local, or declare a python_env.yaml.")
    if wanted == "uv" and not (shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))):
        raise ConfigError("--env-manager uv needs the `uv` command (pip install uv); or use --env-manager virtualenv.")
    return wanted


def _env_file(project: Project) -> str:
    files = project.env_files()
    return str(files[0].relative_to(project.root)) if files else "conda.yaml"


def _conda() -> str | None:
    return shutil.which(os.environ.get("MLFLOW_CONDA_EXE") or "conda") or shutil.which("mamba")


@dataclass(frozen=True)
class StepEnvironment:
    """A ready environment: how to run in it, and what it resolved to."""

    manager: str
    #: The environment's directory; None for ``local``.
    prefix: Path | None
    #: Resolved packages (``pip freeze`` / ``conda list --export``); "" for ``local``.
    packages: str
    #: The project's declaration hash (:meth:`Project.env_hash`).
    declared: str

    def key(self) -> str:
        """The environment's part of a cache key: the declaration alone for ``local`` (as before built
        environments existed, and as the backend computes it), else manager + declaration + packages."""
        if self.manager == "local":
            return self.declared
        doc = {"manager": self.manager, "declared": self.declared,
               "packages": hashlib.sha256(self.packages.encode()).hexdigest()}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def command_env(self, env: Mapping[str, str], overlay: Path | None) -> dict[str, str]:
        """``env`` with this environment first on PATH (and mltf_flow's helpers importable through
        ``overlay``, a directory holding only the package)."""
        out = dict(env)
        if self.prefix is None:
            out["PATH"] = os.path.dirname(sys.executable) + os.pathsep + out.get("PATH", "")
            return out
        out["PATH"] = f"{self.prefix / 'bin'}{os.pathsep}{out.get('PATH', '')}"
        out.pop("PYTHONHOME", None)
        out["CONDA_PREFIX" if self.manager == "conda" else "VIRTUAL_ENV"] = str(self.prefix)
        if overlay is not None:
            out["PYTHONPATH"] = os.pathsep.join(filter(None, (str(overlay), out.get("PYTHONPATH"))))
        return out


def prepare(project: Project, manager: str, env_root: Path, log: Callable[[str], None]) -> StepEnvironment:
    """The environment ``manager`` gives ``project``, built now when it does not exist yet."""
    declared = project.env_hash()
    if manager == "local":
        return StepEnvironment("local", None, "", declared)
    if manager == "conda":
        prefix = _ensure_conda(project, declared, env_root, log)
        return StepEnvironment("conda", prefix, (prefix / ".mltf-freeze.txt").read_text(), declared)
    from mltf_flow.pyenv import PythonEnv, ensure_env, frozen_packages, read_python_env

    files = project.env_files()
    if project.env_type == "python_env" and files:
        spec = read_python_env(files[0])
    else:
        from importlib.metadata import version

        # No env file: MLflow builds this Python with mlflow itself.
        spec = PythonEnv(python=f"{sys.version_info.major}.{sys.version_info.minor}",
                         dependencies=(f"mlflow=={version('mlflow')}",))
    prefix = ensure_env(spec, declared, env_root, project.root, log=log, tool="uv" if manager == "uv" else "pip")
    return StepEnvironment(manager, prefix, frozen_packages(prefix), declared)


def _ensure_conda(project: Project, declared: str, env_root: Path, log: Callable[[str], None]) -> Path:
    conda = _conda()
    if conda is None:  # choose_manager said so already; a machine can lose conda in between
        raise EnvBuildError("no `conda` command on PATH; use --env-manager local.")
    target = env_root / f"mltf-conda-{declared[:16]}"
    env_root.mkdir(parents=True, exist_ok=True)
    with open(env_root / f".{target.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / _CONDA_MARKER).exists():
                log(f"reusing conda environment {target}")
                return target
            shutil.rmtree(target, ignore_errors=True)
            log(f"building conda environment {target}")
            args = [conda, "env", "create", "--prefix", str(target), "--file", str(project.env_files()[0])]
            proc = subprocess.run(args, cwd=project.root, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise EnvBuildError(f"{' '.join(args)} failed (exit code {proc.returncode}):\n"
                                    f"{(proc.stdout + proc.stderr)[-2000:]}")
            listed = subprocess.run([conda, "list", "--prefix", str(target), "--export"], capture_output=True,
                                    text=True, check=True)
            (target / ".mltf-freeze.txt").write_text(listed.stdout)
            (target / _CONDA_MARKER).write_text("ok\n")
            return target
        except BaseException:
            if not (target / _CONDA_MARKER).exists():
                shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


__all__ = ["MANAGERS", "StepEnvironment", "choose_manager", "default_env_root", "prepare"]
