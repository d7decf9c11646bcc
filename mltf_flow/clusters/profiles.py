"""Cluster profiles: named, layered YAML settings that say where a step's work runs.

Sources, lowest precedence first: the shipped ``mltf_flow/profiles.yaml`` (every key commented),
``/etc/mltf_flow/profiles.yaml``, ``~/.config/mltf_flow/profiles.yaml``, the files of the setting
``profile_files`` (``$MLTF_FLOW_PROFILE_FILES``, colon-separated; later files win), then
``MLTF_FLOW_SET__<PROFILE>__<KEY>=<yaml value>``. Nothing is read from the current directory: the same
files give the same profiles wherever you stand. A profile may ``extends:`` another and then overrides only
what differs (unlike dask-jobqueue's ``config_name``, which needs all ~25 keys). Unknown keys warn; invalid
values raise :class:`~mltf_flow.errors.ConfigError` naming the file, profile and key. The types are in
:mod:`mltf_flow.config.profiles`; resolved profiles are memoised per process by the files' stamps and the
variables. Nothing here imports dask.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mltf_flow.config.files import load_yaml, read_yaml_mapping, stamp
from mltf_flow.config.memo import remembered
from mltf_flow.config.profiles import KEYS, KINDS, SLURM_KEYS, AnyProfile, LocalProfile, Profile, SlurmProfile
from mltf_flow.config.schema import validate
from mltf_flow.config.units import clock, duration_seconds, walltime_seconds
from mltf_flow.errors import ConfigError

__all__ = ["AnyProfile", "LocalProfile", "Profile", "SlurmProfile", "duration_seconds", "get_profile",
           "gpu_variant", "load_raw", "profile_files", "profile_names", "walltime_seconds"]

_SHIPPED = Path(__file__).resolve().parent.parent / "profiles.yaml"
_SITE_FILES = (Path("/etc/mltf_flow/profiles.yaml"), Path("~/.config/mltf_flow/profiles.yaml"))
#: ``MLTF_FLOW_SET__<PROFILE>__<KEY>=<yaml value>`` sets one key of one profile.
SET_PREFIX = "MLTF_FLOW_SET__"
_META = {"extends"}


@dataclass
class _Raw:
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    defined_in: str = "?"


@dataclass
class _Loaded:
    raw: dict[str, _Raw]


_LOADED: dict[tuple[Any, ...], _Loaded] = {}
#: Resolved profiles by the stamps of their inputs, then by name.
_RESOLVED: dict[tuple[Any, ...], dict[str, AnyProfile]] = {}


def profile_files() -> list[Path]:
    """The profile files read, lowest precedence first (absolute; the missing site files left out)."""
    from mltf_flow.config import load_settings

    candidates = [_SHIPPED, *(p.expanduser() for p in _SITE_FILES)]
    return [p.resolve() for p in candidates if p.is_file()] + list(load_settings().profile_files)


def _inputs() -> tuple[list[Path], tuple[tuple[str, str], ...]]:
    """What profiles are made of: the candidate files (present or not) and the ``MLTF_FLOW_SET__`` variables."""
    from mltf_flow.config import load_settings

    candidates = [_SHIPPED, *(p.expanduser() for p in _SITE_FILES), *load_settings().profile_files]
    return candidates, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(SET_PREFIX)))


def _loaded() -> _Loaded:
    """Every profile file read and layered, once per version of the files and variables."""
    candidates, env = _inputs()
    key = (tuple(stamp(p) for p in candidates), env)
    if key not in _LOADED:
        _LOADED[key] = _Loaded(_layered(profile_files()))
    return _LOADED[key]


def _read(path: Path) -> dict[str, Any]:
    data = read_yaml_mapping(path)
    if not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected a mapping of profile name -> settings.")
    return data


def _layered(files: list[Path]) -> dict[str, _Raw]:
    raw: dict[str, _Raw] = {}
    for path in files:
        for name, settings in _read(path).items():
            entry = raw.setdefault(str(name), _Raw(defined_in=str(path)))
            for key, value in settings.items():
                if key not in KEYS and key not in _META:
                    warnings.warn(f"{path}: profile {name!r}: unknown key {key!r} ignored (usually a typo; known: "
                                  f"{', '.join(KEYS)})", stacklevel=5)
                    continue
                entry.values[key] = value
                entry.sources[key] = str(path)
    _apply_variables(raw)
    return raw


def _apply_variables(raw: dict[str, _Raw]) -> None:
    normalised = {n.upper().replace("-", "_"): n for n in raw}
    for env, text in sorted(os.environ.items()):
        if not env.startswith(SET_PREFIX):
            continue
        target, _, raw_key = env[len(SET_PREFIX):].partition("__")
        found, key = normalised.get(target), raw_key.lower()
        if found is None or (key not in KEYS and key not in _META):
            raise ConfigError(
                f"{env}: no profile {target!r} or no key {key!r} to override. Write {SET_PREFIX}<PROFILE>__<KEY> "
                f"with the profile's name in capitals and '-' as '_' (profiles: {', '.join(sorted(normalised))})."
            )
        try:
            raw[found].values[key] = load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{env}: value is not valid YAML: {exc}. Quote it as YAML, e.g. "
                              f"{env}='[\"module load cuda\"]'.") from exc
        raw[found].sources[key] = f"${env}"


def load_raw() -> dict[str, _Raw]:
    """Every profile as merged raw key/values with their sources (``extends`` not applied)."""
    return _loaded().raw


def profile_names() -> list[str]:
    return sorted(load_raw())


def get_profile(name: str) -> AnyProfile:
    """Resolve profile ``name``: apply ``extends`` chains, check every value (memoised per process by the
    files' stamps, and across invocations by their contents: :mod:`mltf_flow.config.memo`)."""
    candidates, env = _inputs()
    key = (tuple(stamp(p) for p in candidates), env)
    resolved = _RESOLVED.setdefault(key, {})
    if name not in resolved:
        resolved[name] = remembered("profile", candidates, (env, name), lambda: _resolve(_loaded().raw, name))
    return resolved[name]


def _chain(raw: dict[str, _Raw], name: str) -> list[str]:
    if name not in raw:
        raise ConfigError(
            f"no profile {name!r}; known profiles: {', '.join(sorted(raw))}. Define it in "
            "~/.config/mltf_flow/profiles.yaml or a file listed in MLTF_FLOW_PROFILE_FILES."
        )
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise ConfigError(f"profiles extend each other in a cycle: {' -> '.join([*chain, current])}. "
                              f"Remove one 'extends' ({raw[current].sources.get('extends', '?')}).")
        if current not in raw:
            raise ConfigError(
                f"{raw[chain[-1]].sources.get('extends', '?')}: profile {chain[-1]!r} extends unknown profile "
                f"{current!r}; known profiles: {', '.join(sorted(raw))}."
            )
        chain.append(current)
        parent = raw[current].values.get("extends")
        current = str(parent) if parent is not None else None
    return chain


def _resolve(raw: dict[str, _Raw], name: str) -> AnyProfile:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    owners: dict[str, str] = {}
    for link in reversed(_chain(raw, name)):
        for key, value in raw[link].values.items():
            if key not in _META:
                values[key], sources[key], owners[key] = value, raw[link].sources.get(key, "?"), link
    sources["(defined in)"] = raw[name].defined_in

    def where(key: str) -> str:
        return f"{sources.get(key, raw[name].defined_in)}: profile {owners.get(key, name)!r}"

    kind = values.setdefault("kind", "local")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"{where('kind')}, key 'kind': expected 'local' or 'slurm', found {kind!r}.")
    if cls is LocalProfile:
        values = {k: v for k, v in values.items() if k not in SLURM_KEYS}
    profile = validate(cls, {**values, "name": name, "sources": sources}, where)
    assert isinstance(profile, LocalProfile | SlurmProfile)
    _check_consistency(profile)
    return profile


def _check_consistency(p: Profile) -> None:
    def where(key: str) -> str:
        return f"{p.source_of(key)}: profile {p.name!r}"

    fabric = p.fabric
    if fabric is not None and fabric.kind in ("roce", "socket") and not fabric.socket_ifname and not p.interface:
        raise ConfigError(
            f"{where('fabric')}: fabric kind {fabric.kind} needs socket_ifname (or the profile's interface): "
            "NCCL would otherwise guess the bootstrap interface."
        )
    if not isinstance(p, SlurmProfile):
        return
    # Dask retires a worker after lifetime +/- stagger: the latest retirement must precede the walltime.
    stagger = duration_seconds(p.lifetime_stagger) if p.lifetime_stagger else 0.0
    if p.lifetime and duration_seconds(p.lifetime) + stagger >= walltime_seconds(p.walltime):
        raise ConfigError(
            f"{where('lifetime')}: lifetime {p.lifetime} (+ stagger {p.lifetime_stagger or '0s'}) is not below "
            f"walltime {p.walltime}; workers would be killed by SLURM mid-task. Use e.g. lifetime: 50m, "
            "lifetime_stagger: 4m with walltime: \"01:00:00\"."
        )
    # A step's command runs inside the workers' jobs: SLURM would end them before the timeout fires.
    if p.timeout is not None and p.timeout > walltime_seconds(p.walltime):
        raise ConfigError(
            f"{where('timeout')}, key 'timeout': timeout {clock(p.timeout)} is longer than the profile's walltime "
            f"{p.walltime} ({p.source_of('walltime')}): SLURM would end the workers first. Lower timeout (e.g. "
            f"timeout: \"{clock(walltime_seconds(p.walltime))}\") or raise walltime."
        )
    if p.gpus_per_node and p.processes not in (None, p.gpus_per_node):
        raise ConfigError(
            f"{where('processes')}: processes={p.processes} with gpus_per_node={p.gpus_per_node}: GPU jobs run one "
            "worker per GPU. Remove 'processes'."
        )
    if p.cores < p.worker_processes:
        raise ConfigError(
            f"{where('cores')}: cores={p.cores} is fewer than the {p.worker_processes} worker processes per job. "
            f"Set cores: {p.worker_processes} (or more)."
        )


def gpu_variant(profile: AnyProfile) -> AnyProfile:
    """The profile a GPU step uses under ``profile``: itself if it has GPUs, else its ``gpu_profile``."""
    if profile.gpus_per_node or profile.gpu_profile is None:
        return profile
    return get_profile(profile.gpu_profile)
