"""The keys of ``mlflow run --backend mltf --backend-config CONFIG`` as a type: :class:`BackendRequest`.

``CONFIG`` (a JSON file or inline JSON) may mix two styles: NCSA mlflow-slurm's ``slurm_config.json`` keys
(:data:`MLFLOW_SLURM_KEYS`, accepted unchanged) and our own (:data:`OWN_KEYS`, ``profile`` among them).
Keys MLflow itself adds (:data:`MLFLOW_KEYS`) are not ours to check: the reader drops them before
validating. Every other key is checked here, with a message that names it; what the keys mean, and how
they are laid over a base SLURM profile, is :mod:`mltf_flow.backend.config`. SLURM's time limits and
``--mem`` are SLURM's formats (:mod:`mltf_flow.config.units`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, ClassVar

from mltf_flow.config.fields import Before, Ge, Le, StrictBool, StrictInt
from mltf_flow.config.schema import Schema
from mltf_flow.config.units import Interval, SlurmMemory, TimeLimit
from mltf_flow.redaction import is_secret_name

#: Keys of NCSA mlflow-slurm's slurm_config.json (accepted unchanged).
MLFLOW_SLURM_KEYS = ("partition", "account", "gpus_per_node", "gres", "mem", "nodes", "ntasks", "time", "modules",
                     "environment", "exports", "exclusive", "sbatch-script-file")
#: Keys ``mlflow.projects.run`` adds to every backend config.
MLFLOW_KEYS = ("ENV_MANAGER", "SYNCHRONOUS", "DOCKER_ARGS", "STORAGE_DIR", "build_image", "docker_auth",
               "_mlflow_local_backend_run_id")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENVIRONMENT = 'a list of "NAME=value" strings or a mapping NAME: value'
# Directives the backend writes itself: a second one would move the log, the working directory or the
# signal the wrapper relies on. sbatch takes long options abbreviated (--out) and short ones attached (-o/x).
_OWN_LONG = ("output", "error", "chdir", "export", "signal", "job-name", "parsable", "open-mode")
_OWN_SHORT = ("o", "e", "D", "J")


def own_directive(line: str) -> str | None:
    """The option of ours ``line`` would set, or None."""
    if line.startswith("--"):
        name = line[2:].split("=", 1)[0].split(" ", 1)[0]
        hits = [own for own in _OWN_LONG if name and own.startswith(name)]
        return f"--{hits[0]}" if hits and len(name) >= 2 else None
    if line.startswith("-") and len(line) > 1 and line[1] in _OWN_SHORT:
        return f"-{line[1]}"
    return None


def gres_gpus(gres: str) -> int:
    """GPUs per node in a ``--gres`` value: ``gpu:2``, ``gpu:a100:2``, ``gpu`` (1), ``shard:4`` (0)."""
    total = 0
    for item in filter(None, (part.strip() for part in gres.split(","))):
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def _line(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or "\n" in value:
        raise ValueError(f"expected a string (one line), found {value!r}.")
    return value.strip() or None


def _path(value: Any) -> Any:
    if not isinstance(value, str) or "\n" in value or not value.strip():
        raise ValueError(f"expected a path, found {value!r}.")
    return value.strip()


def _lines(value: Any) -> Any:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and "\n" not in v for v in value):
        raise ValueError(f'expected a list of strings, e.g. ["cuda/12.4", "gcc"], found {value!r}.')
    return tuple(v.strip() for v in value if v.strip())


def _directives(value: Any) -> Any:
    lines = _lines(value)
    for line in lines:
        if not line.startswith("-"):
            raise ValueError(f'expected sbatch options like "--reservation=mltf", found {value!r}.')
        option = own_directive(line)
        if option is not None:
            raise ValueError(f"{line!r}: {option} is set by the mltf backend itself (log file, working directory, "
                             "environment and the pre-timeout signal the job's wrapper relies on).")
    return lines


def _environment(value: Any) -> Any:
    """``export`` lines. A list of ``NAME=value`` strings is written as given (mlflow-slurm writes ``export
    NAME=value``, so ``$PATH`` expands in the job); a mapping's values are quoted. Values are never shown:
    they may be secrets."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        items = [(str(k), str(v), False) for k, v in value.items()]
    elif isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        items = [(v.partition("=")[0].strip(), v.partition("=")[2], True) for v in value]
    else:
        raise ValueError(f"expected {_ENVIRONMENT}, found (a value).")
    lines = []
    for name, text, raw in items:
        if not _IDENT.match(name):
            raise ValueError(f"{name!r} is not a variable name.")
        if "\n" in text:
            raise ValueError(f"the value of {name} spans several lines.")
        lines.append(f"export {name}={text if raw else shlex.quote(text)}")
    return tuple(lines)


def _exports(value: Any) -> Any:
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f'expected a list of variable names, e.g. ["HF_HOME", "WANDB_MODE"], found {value!r}.')
    cleaned = tuple(n.strip() for n in names if n.strip())
    bad = [n for n in cleaned if not _IDENT.match(n)]
    if bad:
        raise ValueError(f"{', '.join(map(repr, bad))} are not variable names.")
    return cleaned


Line = Annotated[str | None, Before(_line)]
#: None: not given (a given null is refused).
PathText = Annotated[str | None, Before(_path)]
Lines = Annotated[tuple[str, ...], Before(_lines)]
Whole = Annotated[StrictInt, Ge(1)]


@dataclass(frozen=True, kw_only=True)
class BackendRequest(Schema):
    """What a backend config asks for, checked; only the keys it gives count (the base profile gives the rest,
    :mod:`mltf_flow.backend.config`). Checks across keys that only the config sets are here."""

    joiner: ClassVar[str] = ": "
    written: ClassVar[dict[str, str]] = {"sbatch_script_file": "sbatch-script-file"}
    expect: ClassVar[dict[str, str]] = {
        "nodes": "a whole number >= 1", "ntasks": "a whole number >= 1", "cpus_per_task": "a whole number >= 1",
        "gpus_per_node": "a whole number >= 0", "pre_timeout_signal": "seconds between 0 and 65535",
        "max_restarts": "a whole number >= 0",
    }

    # mlflow-slurm's keys
    partition: Line = None
    account: Line = None
    gpus_per_node: Annotated[StrictInt, Ge(0)] = 0
    gres: Line = None
    mem: SlurmMemory = None
    nodes: Whole = 1
    ntasks: Whole | None = None
    time: TimeLimit = "01:00:00"
    modules: Lines = ()
    environment: Annotated[tuple[str, ...], Before(_environment)] = ()
    exports: Annotated[tuple[str, ...], Before(_exports)] = ()
    exclusive: StrictBool = False
    sbatch_script_file: PathText = None
    # our own
    profile: Line = None
    qos: Line = None
    cpus_per_task: Whole = 1
    constraint: Line = None
    extra_directives: Annotated[tuple[str, ...], Before(_directives)] = ()
    job_name: Line = None
    job_dir: PathText = None
    env_root: PathText = None
    python: PathText = None
    pre_timeout_signal: Annotated[StrictInt, Ge(0), Le(65535)] | None = None  # sbatch's --signal=...@N: 16 bits
    forward_pre_timeout_signal: StrictBool = False
    max_restarts: Annotated[StrictInt, Ge(0)] = 10
    kill_grace: Interval = 10.0
    poll_interval: Interval = 2.0
    max_poll_interval: Interval = 30.0
    system_metrics: StrictBool = True
    run_id: Line = None

    def __post_init__(self) -> None:
        # Runs after each key was checked; a ValueError here is reported for the whole config.
        for line in self.environment:
            name = line.removeprefix("export ").partition("=")[0]
            if is_secret_name(name):
                raise ValueError(
                    f"key 'environment' sets {name}, which looks like a secret; the job script is kept as an "
                    "MLflow artifact, so secrets never go into it. Export it in the shell you submit from (sbatch "
                    "passes the environment to the job) and list the name in 'exports'.")
        if self.gres and gres_gpus(self.gres) and self.gpus_per_node:
            raise ValueError(f"both 'gres' ({self.gres!r}) and 'gpus_per_node' ask for GPUs; keep one.")
        if self.max_poll_interval < self.poll_interval:
            raise ValueError("max_poll_interval must be >= poll_interval.")
        if self.ntasks is not None and self.ntasks < self.nodes:
            raise ValueError(f"ntasks={self.ntasks} is fewer than nodes={self.nodes}: every node needs a task. "
                             "Raise ntasks, or drop it to get one task per GPU on each node.")


#: Every key a backend config may give, as written.
KEYS = tuple(BackendRequest.written.get(f.name, f.name) for f in fields(BackendRequest))
#: Keys of our own.
OWN_KEYS = tuple(key for key in KEYS if key not in MLFLOW_SLURM_KEYS)
#: Key as written -> field.
FIELDS = {key: name for name, key in BackendRequest.written.items()}
