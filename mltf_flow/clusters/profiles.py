"""Cluster profiles: named, layered YAML settings that say where a step's work runs.

Sources, lowest precedence first: the shipped ``mltf_flow/profiles.yaml`` (every key commented),
``/etc/mltf_flow/profiles.yaml``, ``~/.config/mltf_flow/profiles.yaml``, ``./profiles.yaml``, each file in
``$MLTF_FLOW_PROFILES`` (colon-separated), then ``MLTF_FLOW_PROFILE__<NAME>__<KEY>=<yaml value>``.
A profile may ``extends:`` another and then overrides only what differs (unlike dask-jobqueue's
``config_name``, which needs all ~25 keys). Unknown keys warn; invalid values raise
:class:`~mltf_flow.errors.ConfigError` naming the file and key. Nothing here imports dask.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mltf_flow.config import read_yaml_mapping
from mltf_flow.errors import ConfigError

_SHIPPED = Path(__file__).resolve().parent.parent / "profiles.yaml"
# Like ./luigi.cfg for Luigi, ./profiles.yaml of the directory you run in is read too (a project's own).
_SITE_FILES = (Path("/etc/mltf_flow/profiles.yaml"), Path("~/.config/mltf_flow/profiles.yaml"), Path("profiles.yaml"))
_ENV_PREFIX = "MLTF_FLOW_PROFILE__"
# SLURM time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_WALLTIME = re.compile(r"^(?:(\d+)-(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?|(?:(\d+):)?(\d+):(\d{1,2})|(\d+))$")
# One number and one unit, no spaces: Dask's parse_timedelta takes exactly that, and the value is
# written unquoted into the job script's worker command line.
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_BYTES = re.compile(r"^\d+(\.\d+)?\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Profile:
    """A resolved profile (``extends`` applied, values checked). See ``profiles.yaml`` for meanings."""

    name: str
    kind: str = "local"
    workers: int = 2
    threads_per_worker: int = 1
    memory: str = "2GB"
    dashboard_address: str | None = "127.0.0.1:8787"
    scheduler_address: str | None = None
    gpu_profile: str | None = None
    worker_start_timeout: float = 120.0
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    walltime: str = "01:00:00"
    cores: int = 1
    gpus_per_node: int = 0
    gpu_directive: str = "gres"
    processes: int | None = None
    lifetime: str | None = None
    lifetime_stagger: str | None = None
    interface: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    prologue: tuple[str, ...] = ()
    extra_directives: tuple[str, ...] = ()
    python: str | None = None
    job_name: str = "mltf-worker"
    death_timeout: int = 60
    #: The network for multi-node training (NCCL/gloo); see mltf_flow.fabric.spec.
    fabric: dict[str, Any] | None = None
    #: How rucio:// datasets are staged for this facility; see mltf_flow.staging.rucio.
    rucio: dict[str, Any] | None = None
    #: GPUDirect Storage for the jobs (cufile.json, node-local scratch); see mltf_flow.fabric.gds.
    gds: dict[str, Any] | None = None
    #: Where each key's value came from (file or env var), for error messages and `doctor`.
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def worker_processes(self) -> int:
        """Dask worker processes per job: one per GPU, else ``processes`` or 1."""
        if self.processes is not None:
            return self.processes
        return self.gpus_per_node or 1

    @property
    def expected_workers(self) -> int:
        """Workers the cluster should reach: jobs x processes (slurm) or worker processes (local)."""
        return self.workers * (self.worker_processes if self.kind == "slurm" else 1)

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "defaults")

    @property
    def origin(self) -> str:
        """The file (or variable) that defines this profile."""
        return self.sources.get("(defined in)", "?")


_FIELDS = {f.name: f for f in fields(Profile) if f.name not in ("name", "sources")}
_META = {"extends"}


def walltime_seconds(value: str) -> int:
    """Seconds in a SLURM time limit (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``)."""
    match = _WALLTIME.match(value.strip())
    if not match:
        raise ValueError(value)
    g = [int(x) if x else 0 for x in match.groups()]
    if match.group(1) is not None:  # D-H[:M[:S]]
        return ((g[0] * 24 + g[1]) * 60 + g[2]) * 60 + g[3]
    if match.group(8) is not None:  # minutes only
        return g[7] * 60
    return (g[4] * 60 + g[5]) * 60 + g[6]  # [H:]M:S


def duration_seconds(value: str) -> float:
    match = _DURATION.match(value.strip())
    if not match:
        raise ValueError(value)
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _check(name: str, key: str, value: Any, where: str) -> Any:
    """Validate one value; return it in its stored form."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{where}: profile {name!r}, key {key!r}: expected {expected}, found {value!r}.")

    if key == "walltime":
        if isinstance(value, int):
            raise ConfigError(
                f"{where}: profile {name!r}, key 'walltime' is the number {value} (YAML reads an unquoted "
                f"10:00:00 as sexagesimal {36000}). Quote it: walltime: \"10:00:00\"."
            )
        if not isinstance(value, str) or not _WALLTIME.match(value):
            raise fail('a quoted SLURM time like "02:00:00" or "1-00:00:00"')
        return value
    if key == "fabric":
        from mltf_flow.fabric.spec import check_fabric

        return check_fabric(value, f"{where}: profile {name!r}")
    if key == "gds":
        from mltf_flow.fabric.gds import gds_settings

        gds_settings(value, f"{where}: profile {name!r}")
        return None if value is None else dict(value)
    if key == "rucio":
        from mltf_flow.staging.rucio import rucio_settings

        rucio_settings(value, f"{where}: profile {name!r}")  # checked now, parsed where it is used
        return None if value is None else dict(value)
    if key == "kind":
        if value not in ("local", "slurm"):
            raise fail("'local' or 'slurm'")
        return value
    if key == "gpu_directive":
        if value not in ("gres", "gpus-per-node"):
            raise fail("'gres' or 'gpus-per-node'")
        return value
    if key == "memory":
        if not isinstance(value, str) or not _BYTES.match(value.strip()):
            raise fail("a size like '4GB' or '16GiB'")
        return value.strip()
    if key in ("lifetime", "lifetime_stagger"):
        if value is None:
            return None
        if not isinstance(value, str) or not _DURATION.match(value.strip()):
            raise fail("a duration like '55m', '4m', '1h' or '30s' (one number, one unit, no space)")
        return value.strip()
    if key in ("prologue", "extra_directives"):
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail("a list of strings")
        return tuple(value)
    if key in ("workers", "threads_per_worker", "cores", "death_timeout"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail("a whole number >= 1")
        return value
    if key == "processes":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail("a whole number >= 1, or null")
        return value
    if key == "gpus_per_node":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail("a whole number >= 0")
        return value
    if key == "worker_start_timeout":
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise fail("a number of seconds > 0")
        return float(value)
    # remaining keys: optional strings
    if value is not None and not isinstance(value, str):
        raise fail("a string or null")
    return value


@dataclass
class _Raw:
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    defined_in: str = "?"


def _read(path: Path) -> dict[str, Any]:
    data = read_yaml_mapping(path)
    if not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected a mapping of profile name -> settings.")
    return data


def _profile_files() -> list[Path]:
    files = [_SHIPPED, *(p.expanduser() for p in _SITE_FILES)]
    for entry in filter(None, os.environ.get("MLTF_FLOW_PROFILES", "").split(os.pathsep)):
        path = Path(entry).expanduser()
        if not path.is_file():
            raise ConfigError(f"MLTF_FLOW_PROFILES names {path}, which does not exist.")
        files.append(path)
    # Absolute paths, so every message says which profiles.yaml is meant.
    return [f.resolve() for f in files if f.is_file()]


def load_raw() -> dict[str, _Raw]:
    """Every profile as merged raw key/values with their sources (``extends`` not applied)."""
    raw: dict[str, _Raw] = {}
    for path in _profile_files():
        for name, settings in _read(path).items():
            if str(name) not in raw:
                raw[str(name)] = _Raw(defined_in=str(path))
            entry = raw[str(name)]
            for key, value in settings.items():
                if key not in _FIELDS and key not in _META:
                    warnings.warn(
                        f"{path}: profile {name!r}: unknown key {key!r} ignored "
                        f"(known: {', '.join(sorted(_FIELDS))})",
                        stacklevel=3,
                    )
                    continue
                entry.values[key] = value
                entry.sources[key] = str(path)
    normalised = {n.upper().replace("-", "_"): n for n in raw}
    for env, text in os.environ.items():
        if not env.startswith(_ENV_PREFIX):
            continue
        target, _, raw_key = env[len(_ENV_PREFIX) :].partition("__")
        found, key = normalised.get(target), raw_key.lower()
        if found is None or (key not in _FIELDS and key not in _META):
            raise ConfigError(f"{env}: no profile {target!r} or no key {key!r} to override.")
        try:
            raw[found].values[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{env}: value is not valid YAML: {exc}") from exc
        raw[found].sources[key] = f"${env}"
    return raw


def profile_names() -> list[str]:
    return sorted(load_raw())


def get_profile(name: str) -> Profile:
    """Resolve profile ``name``: apply ``extends`` chains, check every value."""
    raw = load_raw()
    if name not in raw:
        raise ConfigError(
            f"no profile {name!r}; known profiles: {', '.join(sorted(raw))}. Define it in "
            "~/.config/mltf_flow/profiles.yaml or a file listed in MLTF_FLOW_PROFILES."
        )
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise ConfigError(f"profiles extend each other in a cycle: {' -> '.join([*chain, current])}.")
        if current not in raw:
            raise ConfigError(f"profile {chain[-1]!r} extends unknown profile {current!r}.")
        chain.append(current)
        parent = raw[current].values.get("extends")
        current = str(parent) if parent is not None else None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for link in reversed(chain):
        for key, value in raw[link].values.items():
            if key in _META:
                continue
            values[key] = _check(link, key, value, raw[link].sources.get(key, "?"))
            sources[key] = raw[link].sources.get(key, "?")
    sources["(defined in)"] = raw[name].defined_in
    profile = Profile(name=name, sources=sources, **values)
    _check_consistency(profile)
    return profile


def _check_consistency(p: Profile) -> None:
    def where(key: str) -> str:
        return f"{p.source_of(key)}: profile {p.name!r}"

    # Dask retires a worker after lifetime +/- stagger: the latest retirement must precede the walltime.
    stagger = duration_seconds(p.lifetime_stagger) if p.lifetime_stagger else 0.0
    if p.kind == "slurm" and p.lifetime and duration_seconds(p.lifetime) + stagger >= walltime_seconds(p.walltime):
        raise ConfigError(
            f"{where('lifetime')}: lifetime {p.lifetime} (+ stagger {p.lifetime_stagger or '0s'}) is not below "
            f"walltime {p.walltime}; workers would be killed by SLURM mid-task. Use e.g. lifetime: 50m, "
            "lifetime_stagger: 4m with walltime: \"01:00:00\"."
        )
    if p.kind == "slurm" and p.gpus_per_node and p.processes not in (None, p.gpus_per_node):
        raise ConfigError(
            f"{where('processes')}: processes={p.processes} with gpus_per_node={p.gpus_per_node}: GPU jobs run one "
            "worker per GPU. Remove 'processes'."
        )
    fabric = p.fabric or {}
    if fabric.get("kind") in ("roce", "socket") and not fabric.get("socket_ifname") and not p.interface:
        raise ConfigError(
            f"{where('fabric')}: fabric kind {fabric['kind']} needs socket_ifname (or the profile's interface): "
            "NCCL would otherwise guess the bootstrap interface."
        )
    if p.kind == "slurm" and p.cores < p.worker_processes:
        raise ConfigError(
            f"{where('cores')}: cores={p.cores} is fewer than the {p.worker_processes} worker processes per job."
        )


def gpu_variant(profile: Profile) -> Profile:
    """The profile a GPU step uses under ``profile``: itself if it has GPUs, else its ``gpu_profile``."""
    if profile.gpus_per_node or profile.gpu_profile is None:
        return profile
    return get_profile(profile.gpu_profile)
