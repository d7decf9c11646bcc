"""A profile's ``fabric:`` section: checked when the profile loads, resolved on the node that runs a rank.

::

    mltf-a6000:
      fabric:
        kind: auto              # auto (detect RoCE from sysfs on the node), roce, ib, socket, none
        prefer_netdev: ens1f0np0
        traffic_class: 106      # site value: must match the switches' lossless class; same on all ranks
        strict: true            # NCCL_NET=IB: fail instead of silently using TCP sockets

``kind: auto`` is resolved where the rank runs (the GPU node's own sysfs, not the login node's); the other
kinds are pure settings and also go into the job script's prologue, so every process of the worker job
starts with them (NCCL reads its environment once per process). Without a usable RDMA port, ``auto``
falls back to sockets on the profile's ``interface`` (an error with ``strict: true``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltf_flow.errors import ConfigError
from mltf_flow.fabric.nccl import FabricConfig, fabric_from_sysfs, nccl_env, torch_dist_env

KINDS = ("auto", "roce", "ib", "socket", "none")
_INT_KEYS = ("gid_index", "roce_version", "traffic_class", "fifo_tc", "service_level", "qps_per_connection",
             "cross_nic")
_STR_KEYS = ("socket_ifname", "prefer_netdev", "addr_family", "addr_range", "debug", "debug_subsys", "debug_file")
KEYS = ("kind", "hcas", "strict", "overrides", *_INT_KEYS, *_STR_KEYS)
#: Values that only describe the site (never detected): applied on top of what ``auto`` finds.
_SITE_KEYS = ("addr_family", "addr_range", "roce_version", "fifo_tc", "service_level", "qps_per_connection",
              "cross_nic", "strict", "debug", "debug_subsys", "debug_file", "overrides", "gid_index")


def _parse_hca(item: str, where: str) -> tuple[str, int | None]:
    dev, _, port = item.partition(":")
    if port and not port.isdigit():
        raise ConfigError(f"{where}: fabric hca {item!r}: expected DEVICE or DEVICE:PORT, e.g. mlx5_0:1.")
    return dev, int(port) if port else None


def _config(spec: Mapping[str, Any], kind: str, where: str) -> FabricConfig:
    values: dict[str, Any] = {k: spec[k] for k in (*_INT_KEYS, *_STR_KEYS) if spec.get(k) is not None
                              and k != "prefer_netdev"}
    values["hcas"] = tuple(_parse_hca(str(h), where) for h in spec.get("hcas") or ())
    values["strict"] = bool(spec.get("strict", False))
    values["overrides"] = {str(k): str(v) for k, v in (spec.get("overrides") or {}).items()}
    return FabricConfig(kind=kind, **values)


def check_fabric(value: Any, where: str) -> dict[str, Any] | None:
    """Validate a profile's ``fabric`` value (``where`` names its file); return it normalised."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: key 'fabric': expected a mapping (kind: auto, ...), found {value!r}.")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: fabric: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}.")
    spec = dict(value)
    kind = spec.setdefault("kind", "auto")
    if kind not in KINDS:
        raise ConfigError(f"{where}: fabric kind {kind!r}: expected one of {', '.join(KINDS)}.")
    for key in _INT_KEYS:
        if spec.get(key) is not None and (isinstance(spec[key], bool) or not isinstance(spec[key], int)):
            raise ConfigError(f"{where}: fabric {key}: expected a whole number, found {spec[key]!r}.")
    for key in _STR_KEYS:
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ConfigError(f"{where}: fabric {key}: expected a string, found {spec[key]!r}.")
    if not isinstance(spec.get("hcas") or [], list):
        raise ConfigError(f"{where}: fabric hcas: expected a list like [mlx5_0:1], found {spec['hcas']!r}.")
    if not isinstance(spec.get("overrides") or {}, Mapping):
        raise ConfigError(f"{where}: fabric overrides: expected a mapping NCCL_NAME: value.")
    extra = sorted(set(spec) - {"kind"})
    if kind == "none" and extra:
        raise ConfigError(f"{where}: fabric kind none takes no other keys (found {', '.join(extra)}).")
    if kind == "auto" and (spec.get("hcas") or spec.get("socket_ifname")):
        raise ConfigError(f"{where}: fabric kind auto detects hcas and socket_ifname on the node; use prefer_netdev "
                          "to choose a port, or kind: roce to give them explicitly.")
    try:
        if kind in ("roce", "ib", "socket"):
            # socket_ifname may come from the profile's interface (filled in when resolved).
            probe = {**spec, "socket_ifname": spec.get("socket_ifname") or "eth0"}
            nccl_env(_config(probe, kind, where))
        elif kind == "auto":
            # Check the site values now with a stand-in port: a typo must not wait for the GPU node.
            probe = {**spec, "hcas": ["mlx5_0:1"], "socket_ifname": "eth0"}
            nccl_env(_config(probe, "roce", where))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None
    return spec


@dataclass(frozen=True)
class ResolvedFabric:
    """What a rank's process gets: the environment, and a line saying where it came from."""

    env: dict[str, str]
    note: str
    config: FabricConfig | None = None


def static_env(spec: Mapping[str, Any] | None, interface: str | None) -> dict[str, str]:
    """The environment of an explicit (not ``auto``) fabric, for job-script prologues; {} for ``auto``."""
    if not spec or spec.get("kind", "auto") == "auto":
        return {}
    return resolve_fabric(spec, interface=interface).env


def resolve_fabric(
    spec: Mapping[str, Any] | None, *, interface: str | None, sysfs_root: str | Path | None = None,
    nccl_version: tuple[int, int, int] | None = None,
) -> ResolvedFabric:
    """Resolve a fabric section on this host (reads sysfs only for ``kind: auto``)."""
    spec = dict(spec or {"kind": "auto"})
    kind = spec.get("kind", "auto")
    where = f"fabric on {socket.gethostname()}"
    config: FabricConfig | None
    if kind == "none":
        config, note = None, "fabric: none (NCCL and gloo choose their interfaces)"
    elif kind == "auto":
        root = sysfs_root or os.environ.get("MLTF_SYSFS_ROOT", "/sys")
        config = fabric_from_sysfs(root, prefer_netdev=spec.get("prefer_netdev"),
                                   traffic_class=spec.get("traffic_class"), nccl_version=nccl_version)
        if config is None:
            if spec.get("strict"):
                raise ConfigError(
                    f"{where}: strict RoCE requested but no active RoCE port with an IPv4 RoCE v2 GID was found "
                    f"under {root}/class/infiniband (check `mltf-flow doctor` on the node, or set "
                    "fabric.kind: socket)."
                )
            note = f"fabric: auto found no active RoCE v2 port; TCP sockets on {interface or 'the default route'}"
            return ResolvedFabric(env=_fallback_env(spec, interface), note=note)
        else:
            site = {k: spec[k] for k in _SITE_KEYS if spec.get(k) is not None and k != "gid_index"}
            config = dataclasses.replace(config, **{k: v for k, v in _config(site, "roce", where).__dict__.items()
                                                    if k in site})
            if spec.get("gid_index") is not None:
                config = dataclasses.replace(config, gid_index=int(spec["gid_index"]))
            hcas = ",".join(f"{d}:{p}" for d, p in config.hcas)
            note = f"fabric: auto detected RoCE {hcas} via {config.socket_ifname}"
    else:
        if not spec.get("socket_ifname") and interface:
            spec["socket_ifname"] = interface
        config, note = _config(spec, kind, where), f"fabric: {kind} (from the profile)"
    if config is None:
        return ResolvedFabric(env={}, note=note)
    env = nccl_env(config)
    env.update(torch_dist_env(config))
    return ResolvedFabric(env=env, note=note, config=config)


def _fallback_env(spec: Mapping[str, Any], interface: str | None) -> dict[str, str]:
    """``auto`` without a RoCE port: the profile's interface for bootstrap and gloo, the site's debug
    settings, and nothing that disables InfiniBand (NCCL still uses IB ports it finds by itself)."""
    env: dict[str, str] = {}
    if interface:
        env["NCCL_SOCKET_IFNAME"] = "=" + interface
    probe = _config({**spec, "hcas": ["mlx5_0:1"], "socket_ifname": "eth0"}, "roce", "fabric")
    env["NCCL_DEBUG"] = probe.debug
    if probe.debug_subsys:
        env["NCCL_DEBUG_SUBSYS"] = probe.debug_subsys
    if probe.debug_file:
        env["NCCL_DEBUG_FILE"] = probe.debug_file
    full = nccl_env(probe)
    env.update({k: full[k] for k in probe.overrides})
    if interface:
        env["GLOO_SOCKET_IFNAME"] = interface
    return env
