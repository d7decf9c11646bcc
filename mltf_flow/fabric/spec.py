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

from mltf_flow.config.fabric import KINDS as KINDS
from mltf_flow.config.fabric import FabricSettings
from mltf_flow.config.schema import set_fields, validate
from mltf_flow.errors import ConfigError
from mltf_flow.fabric.nccl import FabricConfig, fabric_from_sysfs, nccl_env, torch_dist_env

#: Values that only describe the site (never detected): applied on top of what ``auto`` finds.
_SITE_KEYS = ("addr_family", "addr_range", "roce_version", "fifo_tc", "service_level", "qps_per_connection",
              "cross_nic", "strict", "debug", "debug_subsys", "debug_file", "overrides")
#: A fabric section as it arrives: typed (from a profile), a mapping (from a job's JSON spec) or absent.
FabricSpec = FabricSettings | Mapping[str, Any] | None


def check_fabric(value: Any, where: str) -> FabricSettings | None:
    """A profile's ``fabric`` value as settings (``where`` names its file in errors); None when absent."""
    return None if value is None else validate(FabricSettings, value, where)


def fabric_settings(spec: FabricSpec) -> FabricSettings:
    """A section as settings: typed ones as they are, mappings (a job's spec.json) checked, none is ``auto``."""
    if isinstance(spec, FabricSettings):
        return spec
    if spec is None or _is_default(spec):  # what most job specs carry: no pydantic in a job's wrapper (0.1-0.3 s)
        return FabricSettings()
    return validate(FabricSettings, spec, "fabric")


def _is_default(spec: Mapping[str, Any]) -> bool:
    """True for the default section as a job's spec.json holds it (``asdict`` of it, through JSON)."""
    default = dataclasses.asdict(FabricSettings())
    return dict(spec) == {k: list(v) if isinstance(v, tuple) else v for k, v in default.items()}


@dataclass(frozen=True)
class ResolvedFabric:
    """What a rank's process gets: the environment, and a line saying where it came from."""

    env: dict[str, str]
    note: str
    config: FabricConfig | None = None


def static_env(spec: FabricSpec, interface: str | None) -> dict[str, str]:
    """The environment of an explicit (not ``auto``) fabric, for job-script prologues; {} for ``auto``."""
    if fabric_settings(spec).kind == "auto":
        return {}
    return resolve_fabric(spec, interface=interface).env


def resolve_fabric(
    spec: FabricSpec, *, interface: str | None, sysfs_root: str | Path | None = None,
    nccl_version: tuple[int, int, int] | None = None,
) -> ResolvedFabric:
    """Resolve a fabric section on this host (reads sysfs only for ``kind: auto``)."""
    settings = fabric_settings(spec)
    where = f"fabric on {socket.gethostname()}"
    config: FabricConfig | None
    if settings.kind == "none":
        return ResolvedFabric(env={}, note="fabric: none (NCCL and gloo choose their interfaces)")
    if settings.kind == "auto":
        root = sysfs_root or os.environ.get("MLTF_SYSFS_ROOT", "/sys")
        config = fabric_from_sysfs(root, prefer_netdev=settings.prefer_netdev,
                                   traffic_class=settings.traffic_class, nccl_version=nccl_version)
        if config is None:
            if settings.strict:
                raise ConfigError(
                    f"{where}: strict RoCE requested but no active RoCE port with an IPv4 RoCE v2 GID was found "
                    f"under {root}/class/infiniband (check `mltf-flow doctor` on the node, or set "
                    "fabric.kind: socket)."
                )
            note = f"fabric: auto found no active RoCE v2 port; TCP sockets on {interface or 'the default route'}"
            return ResolvedFabric(env=_fallback_env(settings, interface), note=note)
        site = {k for k in _SITE_KEYS if k in set_fields(settings) and getattr(settings, k) is not None}
        stated = settings.nccl_config("roce")
        config = dataclasses.replace(config, **{k: getattr(stated, k) for k in site})
        if settings.gid_index is not None:
            config = dataclasses.replace(config, gid_index=settings.gid_index)
        hcas = ",".join(f"{d}:{p}" for d, p in config.hcas)
        note = f"fabric: auto detected RoCE {hcas} via {config.socket_ifname}"
    else:
        if not settings.socket_ifname and interface:
            settings = dataclasses.replace(settings, socket_ifname=interface)
        config, note = settings.nccl_config(), f"fabric: {settings.kind} (from the profile)"
    env = nccl_env(config)
    env.update(torch_dist_env(config))
    return ResolvedFabric(env=env, note=note, config=config)


def _fallback_env(spec: FabricSettings, interface: str | None) -> dict[str, str]:
    """``auto`` without a RoCE port: the profile's interface for bootstrap and gloo, the site's debug
    settings, and nothing that disables InfiniBand (NCCL still uses IB ports it finds by itself)."""
    env: dict[str, str] = {}
    if interface:
        env["NCCL_SOCKET_IFNAME"] = "=" + interface
    probe = spec.nccl_config("roce", hcas=(("mlx5_0", 1),), socket_ifname="eth0")
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
