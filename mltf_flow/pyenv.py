"""A project's ``python_env.yaml`` environment, built where the command runs, once, cached, shared.

One builder for both front ends: pipeline steps build it on the machine that runs Luigi (before the key
is computed: the resolved packages are part of it), ``mlflow run --backend mltf`` jobs build it inside
the job on the compute node. ``--env-manager virtualenv`` builds with ``venv`` + pip, ``uv`` with
``uv venv`` + ``uv pip``. mlflow-slurm builds it on the login node (another CPU architecture or glibc
than the GPU node, and a Python that may not exist there); here it is built where it runs:

* the environment's name covers the declaration (and the requirement files it names), the node's machine
  type and the Python it is built with, so x86_64 and aarch64 nodes never share one;
* builds are serialised by a lock file next to it (jobs starting together wait for the first one);
* a marker file is written last, so a build that was killed half-way is removed and redone, never used
  (MLflow's own ``_create_virtualenv`` reuses any directory that exists);
* the resolved packages (``pip freeze``) are written next to the marker (:func:`frozen_packages`): runs
  record them, and a step's cache key covers them;
* the environment lives under the env root (``env_root`` in the backend config, else ``MLFLOW_ENV_ROOT``,
  else ``~/.mlflow/envs``), which must be on a filesystem the nodes share.

The Python of ``python: "3.11"`` is looked for on the node: this interpreter when its version matches,
``python3.11`` on PATH, then pyenv's versions. Nothing is downloaded from python.org.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltf_flow.config.files import load_yaml
from mltf_flow.errors import ConfigError, EnvBuildError

_MARKER = ".mltf-env-complete"
_FREEZE = ".mltf-freeze.txt"
TOOLS = ("pip", "uv")


@dataclass(frozen=True)
class PythonEnv:
    """The parts of ``python_env.yaml`` an environment is built from."""

    python: str
    build_dependencies: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> PythonEnv:
        python = data.get("python")
        if python is None:
            python = f"{sys.version_info.major}.{sys.version_info.minor}"  # MLflow's default: this Python
        unknown = set(data) - {"python", "build_dependencies", "dependencies"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; python_env.yaml has python, "
                              "build_dependencies and dependencies.")

        def deps(key: str) -> tuple[str, ...]:
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
                raise ConfigError(f"{where}: {key} must be a list of requirement strings.")
            return tuple(str(v) for v in value)

        return cls(python=str(python), build_dependencies=deps("build_dependencies"), dependencies=deps("dependencies"))

    def as_dict(self) -> dict[str, Any]:
        return {"python": self.python, "build_dependencies": list(self.build_dependencies),
                "dependencies": list(self.dependencies)}


def read_python_env(path: Path) -> PythonEnv:
    import yaml

    try:
        data = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read as YAML ({exc}).") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with python, build_dependencies, dependencies.")
    return PythonEnv.from_mapping(data, str(path))


def _version(python: str) -> str | None:
    # This interpreter (or the one its venv was made from) answers without a process: keys are computed on
    # every cached rerun, and starting a Python costs ~30 ms each time.
    if python in (sys.executable, getattr(sys, "_base_executable", None)):
        return "{}.{}.{}".format(*sys.version_info[:3])
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _matches(version: str, wanted: str) -> bool:
    return version == wanted or version.startswith(wanted + ".")


def find_python(wanted: str) -> tuple[str, str]:
    """(path, full version) of a Python ``wanted`` (``3.11`` or ``3.11.7``) on this node."""
    candidates: list[str] = [getattr(sys, "_base_executable", sys.executable), sys.executable]
    short = ".".join(wanted.split(".")[:2])
    for name in (f"python{short}", f"python{wanted}"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(root, "versions", f"{wanted}*", "bin", "python")), reverse=True)
    seen: list[str] = []
    for candidate in candidates:
        if candidate in seen or not os.path.isfile(candidate):
            continue
        seen.append(candidate)
        version = _version(candidate)
        if version and _matches(version, wanted):
            return candidate, version
    raise EnvBuildError(
        f"python_env.yaml asks for Python {wanted}, which this node ({platform.node()}) does not have: looked at "
        f"{', '.join(seen) or 'nothing'}, python{short} on PATH and {root}/versions. Install it on the nodes "
        "(pyenv, a module), load its module in the backend config's 'modules', or use --env-manager local."
    )


def env_name(env_hash: str, version: str, tool: str = "pip") -> str:
    kind = "" if tool == "pip" else f"-{tool}"
    return f"mltf-{env_hash[:16]}{kind}-{platform.machine()}-py{version}"


def _freeze(target: Path, tool: str) -> str:
    python = str(target / "bin" / "python")
    args = [_uv(), "pip", "freeze", "--python", python] if tool == "uv" else [python, "-m", "pip", "freeze", "--all"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise EnvBuildError(f"listing the packages of {target} failed (exit code {proc.returncode}): "
                            f"{proc.stderr.strip()[-500:]}")
    return "".join(sorted(line + "\n" for line in proc.stdout.splitlines() if line.strip()))


def frozen_packages(target: Path) -> str:
    """The resolved packages of a built environment (``name==version`` lines, sorted)."""
    return (target / _FREEZE).read_text()


def _uv() -> str:
    found = shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))
    if found is None:
        raise EnvBuildError("--env-manager uv needs the `uv` command: pip install uv, or use --env-manager virtualenv.")
    return found


def helpers_overlay(directory: Path) -> Path:
    """A directory holding only ``mltf_flow`` (a link to this package), for built environments: scripts
    may use its helpers (checkpoint, ddp, tensorfile) without the rest of mltf_flow's environment."""
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / "mltf_flow"
    if not link.exists():
        link.symlink_to(Path(__file__).resolve().parent, target_is_directory=True)
    return directory


def _run(args: list[str], cwd: Path, log: Callable[[str], None], what: str) -> None:
    log(f"$ {shlex.join(args)}")
    proc = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    for line in proc.stdout.splitlines()[-40:]:
        log(f"  {line}")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-10:])
        raise EnvBuildError(f"{what} failed (exit code {proc.returncode}):\n{tail}")


def ensure_env(spec: PythonEnv, env_hash: str, root: Path, project_dir: Path,
               log: Callable[[str], None] = print, tool: str = "pip") -> Path:
    """The directory of the built environment (built now if missing or incomplete); ``tool`` is pip
    (``--env-manager virtualenv``) or uv."""
    python, version = find_python(spec.python)
    # The project's env hash covers its files; the spec adds what was derived (MLflow's default env).
    name = env_name(hashlib.sha256(f"{env_hash}:{sorted(spec.as_dict().items())}".encode()).hexdigest(), version,
                    tool)
    target = root / name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process builds it: say why we wait, then wait
            log(f"waiting for the environment lock {lock.name} (another build of it is running)")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / _MARKER).exists():
                log(f"reusing environment {target}")
                if not (target / _FREEZE).exists():  # built by an older mltf_flow
                    (target / _FREEZE).write_text(_freeze(target, tool))
                return target
            if target.exists():
                log(f"removing the incomplete environment {target} (a build was interrupted)")
                shutil.rmtree(target)
            log(f"building environment {target} with Python {version} ({python}) on {platform.node()}")
            if tool == "uv":
                _run([_uv(), "venv", "--quiet", "--python", python, str(target)], project_dir, log,
                     "creating the virtualenv (uv)")
                pip = [_uv(), "pip", "install", "--python", str(target / "bin" / "python")]
            else:
                _run([python, "-m", "venv", str(target)], project_dir, log, "creating the virtualenv")
                pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
            if spec.build_dependencies:
                _run([*pip, *spec.build_dependencies], project_dir, log, "installing build_dependencies")
            if spec.dependencies:
                # Each entry may be "-r requirements.txt": split it; pip resolves such paths from the
                # project directory, as MLflow does.
                args = [part for dep in spec.dependencies for part in shlex.split(dep)]
                _run([*pip, *args], project_dir, log, "installing dependencies")
            (target / _FREEZE).write_text(_freeze(target, tool))
            (target / _MARKER).write_text(f"{spec.as_dict()}\n")
            return target
        except BaseException:
            if target.exists() and not (target / _MARKER).exists():
                shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
