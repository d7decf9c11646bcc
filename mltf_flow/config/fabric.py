"""A profile's ``fabric:`` section (the network of distributed training), typed and checked at load.

Meanings are in :mod:`mltf_flow.fabric.spec`, which resolves the section on the node that runs a rank.
The site values are checked here with a stand-in port, so a typo fails when the profile loads, not on
the GPU node.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mltf_flow.config.fields import StrictBool, StrictInt, StrictStr
from mltf_flow.config.schema import Schema, set_fields

if TYPE_CHECKING:
    from mltf_flow.fabric.nccl import FabricConfig

KINDS = ("auto", "roce", "ib", "socket", "none")
INT_KEYS = ("gid_index", "roce_version", "traffic_class", "fifo_tc", "service_level", "qps_per_connection",
            "cross_nic")
STR_KEYS = ("socket_ifname", "prefer_netdev", "addr_family", "addr_range", "debug", "debug_subsys", "debug_file")


@dataclass(frozen=True, kw_only=True)
class FabricSettings(Schema):
    """The ``fabric:`` section: ``kind`` (auto, roce, ib, socket, none) and NCCL's site values."""

    section: ClassVar[str] = "fabric"
    shape: ClassVar[str] = "kind: auto, ..."
    expect: ClassVar[dict[str, str]] = {
        "kind": f"one of {', '.join(KINDS)}", "hcas": "a list like [mlx5_0:1]",
        "overrides": "a mapping NCCL_NAME: value", **dict.fromkeys(INT_KEYS, "a whole number"),
        **dict.fromkeys(STR_KEYS, "a string"),
    }

    kind: Literal["auto", "roce", "ib", "socket", "none"] = "auto"
    #: roce/ib: RDMA ports, DEVICE or DEVICE:PORT (NCCL_IB_HCA, exact).
    hcas: tuple[StrictStr, ...] = ()
    #: NCCL_NET=IB (or Socket): fail instead of silently falling back to TCP.
    strict: StrictBool = False
    #: NCCL's "debugging" variables, validated (e.g. NCCL_P2P_LEVEL: NVL).
    overrides: dict[StrictStr, Any] = field(default_factory=dict)
    gid_index: StrictInt | None = None
    roce_version: StrictInt | None = None
    traffic_class: StrictInt | None = None
    fifo_tc: StrictInt | None = None
    service_level: StrictInt | None = None
    qps_per_connection: StrictInt | None = None
    cross_nic: StrictInt | None = None
    socket_ifname: StrictStr | None = None
    prefer_netdev: StrictStr | None = None
    addr_family: StrictStr | None = None
    addr_range: StrictStr | None = None
    debug: StrictStr | None = None
    debug_subsys: StrictStr | None = None
    debug_file: StrictStr | None = None

    def hca_ports(self) -> tuple[tuple[str, int | None], ...]:
        """``hcas`` as (device, port or None)."""
        ports = []
        for item in self.hcas:
            dev, _, port = item.partition(":")
            ports.append((dev, int(port) if port else None))
        return tuple(ports)

    def __post_init__(self) -> None:
        # Runs after pydantic checked each key (a ValueError here is reported for the whole section).
        for item in self.hcas:
            port = item.partition(":")[2]
            if port and not port.isdigit():
                raise ValueError(f"fabric hca {item!r}: expected DEVICE or DEVICE:PORT, e.g. mlx5_0:1.")
        others = sorted(set_fields(self) - {"kind"})
        if self.kind == "none" and others:
            raise ValueError(f"fabric kind none takes no other keys (found {', '.join(others)}).")
        if self.kind == "auto" and (self.hcas or self.socket_ifname):
            raise ValueError("fabric kind auto detects hcas and socket_ifname on the node; use prefer_netdev "
                             "to choose a port, or kind: roce to give them explicitly.")
        if self.kind != "none":
            self._probe()

    def nccl_config(self, kind: str | None = None, **stand_in: Any) -> FabricConfig:
        """The NCCL-level configuration this section states (``kind`` overrides the section's own;
        ``stand_in`` replaces values of the result, e.g. a port where the section leaves it to detection)."""
        from mltf_flow.fabric.nccl import FabricConfig

        values: dict[str, Any] = {k: getattr(self, k) for k in (*INT_KEYS, *STR_KEYS)
                                  if getattr(self, k) is not None and k != "prefer_netdev"}
        values["hcas"] = self.hca_ports()
        values["strict"] = self.strict
        values["overrides"] = {str(k): str(v) for k, v in self.overrides.items()}
        return dataclasses.replace(FabricConfig(kind=kind or self.kind, **values), **stand_in)

    def _probe(self) -> None:
        """NCCL's own checks of the site values (ranges, debug levels, override names)."""
        from mltf_flow.fabric.nccl import nccl_env

        if self.kind == "auto":  # a stand-in port: the site values are checked now
            probe = self.nccl_config("roce", hcas=(("mlx5_0", 1),), socket_ifname="eth0")
        else:  # socket_ifname may come from the profile's interface (filled in when resolved)
            probe = self.nccl_config(socket_ifname=self.socket_ifname or "eth0")
        nccl_env(probe)
