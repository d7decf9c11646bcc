"""The backend config of ``mlflow run --backend mltf --backend-config CONFIG``: checked before anything runs.

``CONFIG`` is a JSON file (or inline JSON) in one of two styles, which may be mixed:

* **mlflow-slurm's** ``slurm_config.json``, unchanged: ``partition``, ``account``, ``gpus_per_node``,
  ``gres``, ``mem``, ``nodes``, ``ntasks``, ``time``, ``modules``, ``environment``, ``exports``,
  ``exclusive``, ``sbatch-script-file``;
* **a profile of ours**: ``{"profile": "mltf-a6000"}`` takes partition, account, qos, walltime, cores,
  memory, GPUs, extra directives, prologue, python, interface, fabric and gds from that profile
  (``mltf-flow profiles`` lists them); keys given next to it override the profile's values.

Without ``profile`` the base is the configured default profile when it is a SLURM one, else the shipped
``slurm`` profile (1 core, 4 GB, 1 hour). Every key is checked here with a message that names it; an
unknown key is an error (a typo must not silently drop a resource request). Keys MLflow itself adds
(``ENV_MANAGER``, ``STORAGE_DIR``, ...) are read, not reported.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.errors import ConfigError

if TYPE_CHECKING:
    from mltf_flow.config.fabric import FabricSettings
    from mltf_flow.config.gds import GdsSettings
    from mltf_flow.config.profiles import SlurmProfile

#: Keys of NCSA mlflow-slurm's slurm_config.json (accepted unchanged).
MLFLOW_SLURM_KEYS = ("partition", "account", "gpus_per_node", "gres", "mem", "nodes", "ntasks", "time", "modules",
                     "environment", "exports", "exclusive", "sbatch-script-file")
#: Keys of our own.
OWN_KEYS = ("profile", "qos", "cpus_per_task", "constraint", "extra_directives", "job_name", "job_dir", "env_root",
            "python", "pre_timeout_signal", "forward_pre_timeout_signal", "kill_grace", "poll_interval",
            "max_poll_interval", "system_metrics", "run_id")
#: Keys ``mlflow.projects.run`` adds to every backend config.
MLFLOW_KEYS = ("ENV_MANAGER", "SYNCHRONOUS", "DOCKER_ARGS", "STORAGE_DIR", "build_image", "docker_auth",
               "_mlflow_local_backend_run_id")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# SLURM's --mem: a number and an optional unit (sbatch also takes a trailing B: 16GB is 16G).
_SLURM_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_BYTES = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)$", re.IGNORECASE)
_BYTE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
# Directives the backend writes itself: a second one would move the log, the working directory or the
# signal the wrapper relies on. sbatch takes long options abbreviated (--out) and short ones attached (-o/x).
_OWN_LONG = ("output", "error", "chdir", "export", "signal", "job-name", "parsable", "open-mode")
_OWN_SHORT = ("o", "e", "D", "J")


def _own_directive(line: str) -> str | None:
    """The option of ours ``line`` would set, or None."""
    if line.startswith("--"):
        name = line[2:].split("=", 1)[0].split(" ", 1)[0]
        hits = [own for own in _OWN_LONG if name and own.startswith(name)]
        return f"--{hits[0]}" if hits and len(name) >= 2 else None
    if line.startswith("-") and len(line) > 1 and line[1] in _OWN_SHORT:
        return f"-{line[1]}"
    return None


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
    job_dir: Path = Path(".mltf/jobs")
    env_root: Path = Path("~/.mlflow/envs")
    script_file: Path | None = None
    pre_timeout_signal: int | None = None
    forward_pre_timeout_signal: bool = False
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
        if self.pre_timeout_signal is not None:
            return self.pre_timeout_signal
        limit = time_seconds(self.time)
        # 2 minutes for real jobs; a tenth of very short limits (SLURM's own resolution is ~1 minute).
        return 120 if limit is None else min(120, max(10, limit // 10))

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


def gres_gpus(gres: str) -> int:
    """GPUs per node in a ``--gres`` value: ``gpu:2``, ``gpu:a100:2``, ``gpu`` (1), ``shard:4`` (0)."""
    total = 0
    for item in filter(None, (part.strip() for part in gres.split(","))):
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def profile_memory_to_slurm(value: str) -> str:
    """A profile's memory (``4GB``, ``16GiB``; Dask's units) as SLURM's ``--mem`` in MiB, rounded up."""
    match = _BYTES.match(value.strip())
    if not match:
        raise ConfigError(f"memory {value!r}: expected a size like '4GB' or '16GiB'.")
    nbytes = float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()]
    return f"{max(1, math.ceil(nbytes / 2**20))}M"


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, value: Any) -> ConfigError:
        shown = "(a value)" if key == "environment" else repr(value)
        return ConfigError(f"{self.source}: key {key!r}: expected {expected}, found {shown}.")

    def string(self, key: str, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or "\n" in value:
            raise self.fail(key, "a string (one line)", value)
        return value.strip() or None

    def integer(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"a whole number >= {minimum}", value)
        return value

    def number(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(key, "a number of seconds > 0", value)
        return float(value)

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def lines(self, key: str, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and "\n" not in v for v in value):
            raise self.fail(key, 'a list of strings, e.g. ["cuda/12.4", "gcc"]', value)
        return tuple(v.strip() for v in value if v.strip())


_UNLIMITED = ("UNLIMITED", "INFINITE")


def time_seconds(value: str) -> int | None:
    """Seconds in a SLURM time limit; None for UNLIMITED/INFINITE."""
    from mltf_flow.config.units import walltime_seconds

    return None if value.upper() in _UNLIMITED else walltime_seconds(value)


def _time(check: _Checker, value: Any) -> str:
    expected = 'a SLURM time limit like "00:30:00", "1-00:00:00", minutes, or "UNLIMITED"'
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise check.fail("time", expected, value)
    text = str(value).strip()
    try:
        seconds = time_seconds(text)
    except ValueError:
        raise check.fail("time", expected, value) from None
    if seconds == 0:  # SLURM reads --time=0 as "no limit": never what a zero meant
        raise check.fail("time", expected + " (above zero)", value)
    return text


def _environment(check: _Checker, value: Any) -> tuple[str, ...]:
    """``export`` lines. A list of ``NAME=value`` strings is written as given (mlflow-slurm writes
    ``export NAME=value``, so ``$PATH`` expands in the job); a mapping's values are quoted."""
    from mltf_flow.redaction import is_secret_name

    if value is None:
        return ()
    if isinstance(value, Mapping):
        items = [(str(k), v, False) for k, v in value.items()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [(v.partition("=")[0].strip(), v.partition("=")[2], True) for v in value if "=" in v]
        if len(items) != len(value):
            raise check.fail("environment", 'a list of "NAME=value" strings or a mapping NAME: value', value)
    else:
        raise check.fail("environment", 'a list of "NAME=value" strings or a mapping NAME: value', value)
    import shlex

    lines = []
    for name, val, raw in items:
        if not _IDENT.match(name):
            raise ConfigError(f"{check.source}: key 'environment': {name!r} is not a variable name.")
        if is_secret_name(name):
            raise ConfigError(
                f"{check.source}: key 'environment' sets {name}, which looks like a secret; the job script is "
                "kept as an MLflow artifact, so secrets never go into it. Export it in the shell you submit "
                "from (sbatch passes the environment to the job) and list the name in 'exports'."
            )
        text = str(val)
        if "\n" in text:
            raise ConfigError(f"{check.source}: key 'environment': the value of {name} spans several lines.")
        lines.append(f"export {name}={text if raw else shlex.quote(text)}")
    return tuple(lines)


def _exports(check: _Checker, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise check.fail("exports", 'a list of variable names, e.g. ["HF_HOME", "WANDB_MODE"]', value)
    cleaned = tuple(n.strip() for n in names if n.strip())
    bad = [n for n in cleaned if not _IDENT.match(n)]
    if bad:
        raise ConfigError(f"{check.source}: key 'exports': {', '.join(map(repr, bad))} are not variable names.")
    return cleaned


def _directives(check: _Checker, value: Any) -> tuple[str, ...]:
    lines = check.lines("extra_directives", value)
    for line in lines:
        if not line.startswith("-"):
            raise check.fail("extra_directives", 'sbatch options like "--reservation=mltf"', value)
        option = _own_directive(line)
        if option is not None:
            raise ConfigError(
                f"{check.source}: key 'extra_directives': {line!r}: {option} is set by the mltf backend itself (log "
                "file, working directory, environment and the pre-timeout signal the job's wrapper relies on)."
            )
    return lines


def _unknown(check: _Checker, keys: list[str]) -> ConfigError:
    known = sorted({*MLFLOW_SLURM_KEYS, *OWN_KEYS})
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ConfigError(
        f"{check.source}: unknown key(s) {', '.join(hints)}. Known keys: {', '.join(known)} "
        "(see docs/mlflow_backend.md)."
    )


def _base_profile(name: str | None, check: _Checker) -> SlurmProfile:
    from mltf_flow.clusters.profiles import get_profile
    from mltf_flow.config import load_settings
    from mltf_flow.config.profiles import SlurmProfile

    if name is None:
        default = load_settings().profile
        name = default if isinstance(get_profile(default), SlurmProfile) else "slurm"
    profile = get_profile(name)
    if not isinstance(profile, SlurmProfile):
        raise ConfigError(
            f"{check.source}: profile {name!r} is a {profile.kind} profile ({profile.origin}); the mltf backend "
            "submits SLURM jobs. Name a slurm profile (mltf-flow profiles lists them)."
        )
    return profile


def parse_backend_config(raw: Mapping[str, Any] | None, *, source: str = "--backend-config",
                         work_dir: Path | None = None) -> BackendConfig:
    """Check ``raw`` and merge it over its base profile (see the module docstring)."""
    check = _Checker(source)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a JSON object of settings, found {type(raw).__name__}.")
    unknown = [k for k in raw if k not in MLFLOW_SLURM_KEYS and k not in OWN_KEYS and k not in MLFLOW_KEYS]
    if unknown:
        raise _unknown(check, unknown)
    profile = _base_profile(check.string("profile", raw.get("profile")), check)
    values = _profile_values(profile)
    here = f"profile {profile.name!r} ({profile.origin})"
    sources = {k: here for k in values}
    given = {k: v for k, v in raw.items() if k not in MLFLOW_KEYS}
    for key, value in given.items():
        sources[key] = source
        _set_given(check, key, value, values)
    _check_merged(values, given, sources, source)
    values.setdefault("job_dir", (work_dir or Path(".mltf").absolute()) / "jobs")
    values.setdefault("env_root", Path(os.environ.get("MLFLOW_ENV_ROOT") or "~/.mlflow/envs").expanduser().absolute())
    values["env_manager"] = raw.get("ENV_MANAGER")
    values["storage_dir"] = raw.get("STORAGE_DIR")
    config = BackendConfig(sources=sources, **values)
    _check_config(config, source)
    return config


def _profile_values(profile: SlurmProfile) -> dict[str, Any]:
    """The base profile's values, under the config's keys."""
    here = f"profile {profile.name!r} ({profile.origin})"
    return {
        "profile": profile.name, "partition": profile.partition, "account": profile.account, "qos": profile.qos,
        "time": profile.walltime, "mem": profile_memory_to_slurm(profile.memory), "cpus_per_task": profile.cores,
        "gpus_per_node": profile.gpus_per_node, "gpu_directive": profile.gpu_directive,
        "extra_directives": _directives(_Checker(f"{here}: extra_directives"), list(profile.extra_directives)),
        "prologue": tuple(profile.prologue),
        "python": profile.python or sys.executable, "interface": profile.interface, "fabric": profile.fabric,
        "gds": profile.gds,
    }


def _set_given(check: _Checker, key: str, value: Any, values: dict[str, Any]) -> None:
    """Check one key the config gives and set it in ``values`` (over the profile's)."""
    if key in ("partition", "account", "qos", "constraint", "job_name", "run_id"):
        values[key] = check.string(key, value)
    elif key == "time":
        values["time"] = _time(check, value)
    elif key == "mem":
        values["mem"] = _mem(check, value)
    elif key in ("nodes", "cpus_per_task"):
        values[key] = check.integer(key, value, 1)
    elif key == "ntasks":
        values["ntasks"] = check.integer(key, value, 1)
    elif key == "gpus_per_node":
        values["gpus_per_node"] = check.integer(key, value, 0)
        values["gpu_directive"] = "gpus-per-node"  # mlflow-slurm writes --gpus-per-node=N
    elif key == "gres":
        values["gres"] = check.string(key, value)
    elif key in ("exclusive", "forward_pre_timeout_signal", "system_metrics"):
        values[key] = check.boolean(key, value)
    elif key == "modules":
        values["modules"] = check.lines(key, value)
    elif key == "environment":
        values["environment"] = _environment(check, value)
    elif key == "exports":
        values["exports"] = _exports(check, value)
    elif key == "extra_directives":
        values["extra_directives"] = _directives(check, value)
    elif key in ("job_dir", "env_root", "sbatch-script-file", "python"):
        text = check.string(key, value)
        if text is None:
            raise check.fail(key, "a path", value)
        path = Path(os.path.expandvars(text)).expanduser().absolute()
        values[{"sbatch-script-file": "script_file"}.get(key, key)] = str(path) if key == "python" else path
    elif key == "pre_timeout_signal":
        values[key] = check.integer(key, value, 0)
        if values[key] > 65535:  # sbatch's --signal=...@N is 16 bits
            raise check.fail(key, "seconds between 0 and 65535", value)
    elif key in ("kill_grace", "poll_interval", "max_poll_interval"):
        values[key] = check.number(key, value)
    elif key == "profile":
        pass


def _mem(check: _Checker, value: Any) -> str:
    """SLURM's --mem from the config's ``mem``: megabytes as a number, or a number and a unit."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return f"{value}M"  # SLURM's default unit
    if isinstance(value, str) and (mem := _SLURM_MEM.match(value.strip())) and int(mem.group(1)) > 0:
        return mem.group(1) + mem.group(2).upper()
    raise check.fail("mem", 'SLURM memory per node like "16G" or "4000M"', value)


def _check_merged(values: dict[str, Any], given: Mapping[str, Any], sources: Mapping[str, str], source: str) -> None:
    """Checks across keys of the merged values, before the config is built; a GPU ``gres`` the config gives
    replaces the profile's GPU request."""
    if values.get("gres") and gres_gpus(values["gres"]) and "gpus_per_node" in given and values["gpus_per_node"]:
        raise ConfigError(f"{source}: both 'gres' ({values['gres']!r}) and 'gpus_per_node' ask for GPUs; keep one.")
    if "gres" in given and gres_gpus(values.get("gres") or "") and "gpus_per_node" not in given:
        values["gpus_per_node"] = 0  # the config's gres asks for GPUs: it replaces the profile's request
    if values.get("max_poll_interval", 30.0) < values.get("poll_interval", 2.0):
        raise ConfigError(f"{source}: max_poll_interval must be >= poll_interval.")
    if not Path(values["python"]).is_file():
        raise ConfigError(
            f"{sources['python']}: python {values['python']!r} does not exist. The job starts its wrapper with it, "
            "so it must be an interpreter with mltf_flow installed, on a filesystem the nodes share."
        )


def _check_config(config: BackendConfig, source: str) -> None:
    """Checks of the built config (task counts, the pre-timeout signal against the time limit)."""
    if config.ntasks is not None and config.ntasks < config.nodes:
        raise ConfigError(f"{source}: ntasks={config.ntasks} is fewer than nodes={config.nodes}: every node needs "
                          "a task. Raise ntasks, or drop it to get one task per GPU on each node.")
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
