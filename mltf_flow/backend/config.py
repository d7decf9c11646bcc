"""The backend config of ``mlflow run --backend mltf --backend-config CONFIG``: checked before anything runs.

``CONFIG`` is a JSON file (or inline JSON) in one of two styles, which may be mixed:

* **mlflow-slurm's** ``slurm_config.json``, unchanged: ``partition``, ``account``, ``gpus_per_node``,
  ``gres``, ``mem``, ``nodes``, ``ntasks``, ``time``, ``modules``, ``environment``, ``exports``,
  ``exclusive``, ``sbatch-script-file``;
* **a profile of ours**: ``{"profile": "mltf-a6000"}`` takes partition, account, qos, walltime, cores,
  memory, GPUs, extra directives, prologue, python, interface, fabric and gds from that profile
  (``mltf-flow profiles`` lists them); keys given next to it override the profile's values.

Without ``profile`` the base is the configured default profile when it is a SLURM one, else the shipped
``slurm`` profile (1 core, 4 GB, 1 hour). Every key is checked, with a message that names it, by its type
(:class:`~mltf_flow.config.backend.BackendRequest`, with the other configuration types); an unknown key is
an error (a typo must not silently drop a resource request). Keys MLflow itself adds (``ENV_MANAGER``,
``STORAGE_DIR``, ...) are read, not reported. This module lays the checked keys over the base profile
(:func:`parse_backend_config`) and says what the result asks SLURM for (:class:`BackendConfig`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.config.backend import FIELDS, KEYS, MLFLOW_KEYS, MLFLOW_SLURM_KEYS, OWN_KEYS, BackendRequest, gres_gpus
from mltf_flow.config.schema import close_match, validate
from mltf_flow.config.units import SIZE_HINT, size_bytes, time_limit_seconds
from mltf_flow.errors import ConfigError

if TYPE_CHECKING:
    from mltf_flow.config import Settings
    from mltf_flow.config.fabric import FabricSettings
    from mltf_flow.config.gds import GdsSettings
    from mltf_flow.config.profiles import SlurmProfile

__all__ = ["MLFLOW_KEYS", "MLFLOW_SLURM_KEYS", "OWN_KEYS", "BackendConfig", "gres_gpus", "load_backend_config_file",
           "parse_backend_config", "profile_memory_to_slurm", "time_seconds"]
#: Seconds in a SLURM time limit; None for UNLIMITED/INFINITE.
time_seconds = time_limit_seconds


@dataclass(frozen=True)
class BackendConfig:
    """A checked backend config (see the module docstring); ``sources`` says where each value came from."""

    profile: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "01:00:00"
    mem: str | None = None
    nodes: int = 1
    ntasks: int | None = None
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    gpu_directive: str = "gres"
    gres: str | None = None
    exclusive: bool = False
    constraint: str | None = None
    extra_directives: tuple[str, ...] = ()
    job_name: str | None = None
    modules: tuple[str, ...] = ()
    environment: tuple[str, ...] = ()
    exports: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    python: str = sys.executable
    interface: str | None = None
    fabric: FabricSettings | None = None
    gds: GdsSettings | None = None
    job_dir: Path = Path(".mltf/jobs")  # parse_backend_config always sets it (under the work_dir)
    env_root: Path = Path("~/.mlflow/envs")
    script_file: Path | None = None
    pre_timeout_signal: int | None = None
    forward_pre_timeout_signal: bool = False
    #: Continuations (new jobs) a training that stops for the time limit may take (mltf_flow.continuation).
    max_restarts: int = 10
    kill_grace: float = 10.0
    poll_interval: float = 2.0
    max_poll_interval: float = 30.0
    system_metrics: bool = True
    run_id: str | None = None
    env_manager: str | None = None
    storage_dir: str | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def gpu_count(self) -> int:
        """GPUs per node, from ``gpus_per_node`` or the ``gpu`` entries of ``gres``."""
        return self.gpus_per_node or gres_gpus(self.gres or "")

    @property
    def tasks(self) -> int:
        """Processes of the job: ``ntasks``, else one per GPU (at least one) on each of ``nodes`` nodes."""
        if self.ntasks is not None:
            return self.ntasks
        return self.nodes * max(self.gpu_count, 1) if self.nodes > 1 else 1

    @property
    def signal_seconds(self) -> int:
        """When SLURM warns the job before its time limit (``--signal=B:USR1@N``); 0 = never."""
        from mltf_flow.continuation import margin_seconds

        return margin_seconds(time_seconds(self.time), self.pre_timeout_signal)

    def directives(self) -> list[str]:
        """The resource ``#SBATCH`` options, in a fixed order."""
        out = [f"--{name}={value}" for name, value in (("partition", self.partition), ("account", self.account),
                                                        ("qos", self.qos)) if value]
        out += [f"--time={self.time}", f"--nodes={self.nodes}"]
        if self.ntasks is not None:
            out.append(f"--ntasks={self.ntasks}")
        elif self.nodes > 1:
            out.append(f"--ntasks-per-node={max(self.gpu_count, 1)}")  # one task per GPU
        else:
            out.append("--ntasks=1")
        out.append(f"--cpus-per-task={self.cpus_per_task}")
        if self.mem:
            out.append(f"--mem={self.mem}")
        gres = [self.gres] if self.gres else []
        if self.gpus_per_node and not gres_gpus(self.gres or ""):  # GPUs next to a non-GPU gres (shard:4)
            if self.gpu_directive == "gres":
                gres.append(f"gpu:{self.gpus_per_node}")
            else:
                out.append(f"--gpus-per-node={self.gpus_per_node}")
        if gres:
            out.append(f"--gres={','.join(gres)}")
        if self.exclusive:
            out.append("--exclusive")
        if self.constraint:
            out.append(f"--constraint={self.constraint}")
        out.extend(self.extra_directives)
        return list(dict.fromkeys(out))  # a profile's --exclusive and the config's exclusive: once

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "defaults")


def profile_memory_to_slurm(value: str) -> str:
    """A profile's memory (``4GB``, ``16GiB``; Dask's units) as SLURM's ``--mem`` in MiB, rounded up."""
    try:
        nbytes = size_bytes(value)
    except ValueError:
        raise ConfigError(f"memory {value!r}: expected {SIZE_HINT}.") from None
    return f"{max(1, math.ceil(nbytes / 2**20))}M"


def _base_profile(name: str | None, settings: Settings | None, source: str) -> SlurmProfile:
    from mltf_flow.clusters.profiles import get_profile
    from mltf_flow.config.profiles import SlurmProfile

    if name is None:
        default = _settings(settings).profile
        name = default if isinstance(get_profile(default), SlurmProfile) else "slurm"
    profile = get_profile(name)
    if not isinstance(profile, SlurmProfile):
        raise ConfigError(
            f"{source}: profile {name!r} is a {profile.kind} profile ({profile.origin}); the mltf backend "
            "submits SLURM jobs. Name a slurm profile (mltf-flow profiles lists them)."
        )
    return profile


def _settings(settings: Settings | None) -> Settings:
    """The caller's resolved settings, or this process's (a caller without them: tests, a library user)."""
    if settings is not None:
        return settings
    from mltf_flow.config import load_settings

    return load_settings()


def parse_backend_config(raw: Mapping[str, Any] | None, settings: Settings | None = None, *,
                         source: str = "--backend-config", work_dir: Path | None = None) -> BackendConfig:
    """Check ``raw`` and merge it over its base profile (see the module docstring). ``settings``: the resolved
    settings, whose ``profile`` is the base when the config names none (resolved here when the caller has
    none and needs them); ``work_dir``: where the job directories go unless ``job_dir`` says (default: the
    settings' work_dir)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a JSON object of settings, found {type(raw).__name__}.")
    _check_keys(raw, source)
    given = {FIELDS.get(k, k): v for k, v in raw.items() if k not in MLFLOW_KEYS}
    request = validate(BackendRequest, given, source)
    profile = _base_profile(request.profile, settings, source)
    values = _profile_values(profile)
    here = f"profile {profile.name!r} ({profile.origin})"
    sources = {k: here for k in values}
    for key in given:
        sources[BackendRequest.written.get(key, key)] = source
        _set_given(key, request, values)
    _check_merged(values, given, sources, source)
    # Never the current directory: the same config gives the same job directories wherever it is read.
    values.setdefault("job_dir", (work_dir or _settings(settings).work_dir) / "jobs")
    values.setdefault("env_root", Path(os.environ.get("MLFLOW_ENV_ROOT") or "~/.mlflow/envs").expanduser().absolute())
    values["env_manager"] = raw.get("ENV_MANAGER")
    values["storage_dir"] = raw.get("STORAGE_DIR")
    config = BackendConfig(sources=sources, **values)
    _check_config(config, source)
    return config


def _check_keys(raw: Mapping[str, Any], source: str) -> None:
    """An unknown key is an error (a typo must not silently drop a resource request); MLflow's are not ours."""
    unknown = [str(k) for k in raw if k not in KEYS and k not in MLFLOW_KEYS]
    if not unknown:
        return
    known = sorted(KEYS)
    hints = [f"{key!r}" + (f" (did you mean {close!r}?)" if (close := close_match(key, known)) else "")
             for key in unknown]
    raise ConfigError(f"{source}: unknown key(s) {', '.join(hints)}. Known keys: {', '.join(known)} "
                      "(see docs/mlflow_backend.md).")


def _profile_values(profile: SlurmProfile) -> dict[str, Any]:
    """The base profile's values, under the config's keys (its extra directives checked as the config's are)."""
    here = f"profile {profile.name!r} ({profile.origin})"
    directives = validate(BackendRequest, {"extra_directives": list(profile.extra_directives)}, here)
    return {
        "profile": profile.name, "partition": profile.partition, "account": profile.account, "qos": profile.qos,
        "time": profile.walltime, "mem": profile_memory_to_slurm(profile.memory), "cpus_per_task": profile.cores,
        "gpus_per_node": profile.gpus_per_node, "gpu_directive": profile.gpu_directive,
        "extra_directives": directives.extra_directives, "prologue": tuple(profile.prologue),
        "python": profile.python or sys.executable, "interface": profile.interface, "fabric": profile.fabric,
        "gds": profile.gds, "pre_timeout_signal": profile.pre_timeout_signal, "max_restarts": profile.max_restarts,
    }


def _set_given(key: str, request: BackendRequest, values: dict[str, Any]) -> None:
    """Set one key the config gives in ``values`` (over the profile's)."""
    value = getattr(request, key)
    if key in ("job_dir", "env_root", "sbatch_script_file", "python"):
        path = Path(os.path.expandvars(value)).expanduser().absolute()
        values[{"sbatch_script_file": "script_file"}.get(key, key)] = str(path) if key == "python" else path
    elif key == "gpus_per_node":
        values[key] = value
        values["gpu_directive"] = "gpus-per-node"  # mlflow-slurm writes --gpus-per-node=N
    elif key != "profile":  # the profile is the base, already in values
        values[key] = value


def _check_merged(values: dict[str, Any], given: Mapping[str, Any], sources: Mapping[str, str], source: str) -> None:
    """Checks of the merged values, before the config is built; a GPU ``gres`` the config gives replaces the
    profile's GPU request."""
    if "gres" in given and gres_gpus(values.get("gres") or "") and "gpus_per_node" not in given:
        values["gpus_per_node"] = 0  # the config's gres asks for GPUs: it replaces the profile's request
    if not Path(values["python"]).is_file():
        raise ConfigError(
            f"{sources['python']}: python {values['python']!r} does not exist. The job starts its wrapper with it, "
            "so it must be an interpreter with mltf_flow installed, on a filesystem the nodes share."
        )


def _check_config(config: BackendConfig, source: str) -> None:
    """Checks of the built config: the pre-timeout signal against the time limit (which the profile may give)."""
    limit = time_seconds(config.time)
    if config.pre_timeout_signal and limit is not None and config.pre_timeout_signal >= limit:
        raise ConfigError(f"{source}: pre_timeout_signal={config.pre_timeout_signal} s is not below the time limit "
                          f"{config.time}; the warning would come before the job starts working.")


def load_backend_config_file(path: Path) -> dict[str, Any]:
    """A backend config file, for our own commands (``mltf-flow render``); MLflow reads it for ``mlflow run``."""
    import json

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"backend config {path}: cannot be read ({exc}).") from exc
    except ValueError as exc:
        raise ConfigError(f"backend config {path}: not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"backend config {path}: expected a JSON object of settings.")
    return data
