"""NCCL over RoCE/InfiniBand: detect RDMA ports from sysfs and build the NCCL environment of a job.

Detection reads ``/sys/class/infiniband/<dev>/ports/<port>/`` only (no root, no verbs library, no
subprocess): link layer (``Ethernet`` = RoCE), state (``4: ACTIVE``), the GID table with each entry's
RoCE type and netdev. Missing or unreadable files (the kernel answers EINVAL for empty GID slots) are
``None``, never an error; a machine without ``class/infiniband`` (CI, a single GPU box) has no ports.

The environment follows NCCL's documentation and measured pitfalls (``nccl_gds_ddp.md``):
``NCCL_IB_HCA`` always in exact form (``=mlx5_0:1``: without ``=``, ``mlx5_1`` also matches
``mlx5_10``), ``NCCL_SOCKET_IFNAME`` exact, ``NCCL_IB_GID_INDEX`` unset unless pinned (NCCL >= 2.21
picks the IPv4 RoCE v2 GID itself), traffic class / service level only as site values, and none of
NCCL's *debugging* variables unless a profile overrides them explicitly. NCCL reads its environment
once per process: these values belong in the job-script prologue, never in a running worker.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mltf_flow.errors import ConfigError

_DEBUG_LEVELS = ("VERSION", "WARN", "INFO", "TRACE")
_STATE = re.compile(r"^\s*(\d+)\s*:\s*(\S+)")
_BAD_NAME = re.compile(r"[,:\s^=]")
#: Variables NCCL documents as "Debugging": allowed only as explicit, validated overrides.
_DEBUG_OVERRIDES: dict[str, set[str] | None] = {
    "NCCL_NET_GDR_LEVEL": {"LOC", "PIX", "PXB", "PHB", "SYS"},
    "NCCL_P2P_LEVEL": {"LOC", "NVL", "PIX", "PXB", "PHB", "SYS"},
    "NCCL_NET_GDR_READ": {"0", "1"},
    "NCCL_IB_DISABLE": {"0", "1"},
    "NCCL_P2P_DISABLE": {"0", "1"},
    "NCCL_ALGO": None,
    "NCCL_PROTO": None,
}


@dataclass(frozen=True)
class GidEntry:
    index: int
    gid: str
    type: str | None  # "RoCE v2", "IB/RoCE v1", or None when unreadable
    ndev: str | None


@dataclass(frozen=True)
class RdmaPort:
    device: str
    port: int
    link_layer: str | None
    state: str | None
    state_num: int | None
    rate: str | None
    netdevs: tuple[str, ...]
    gids: tuple[GidEntry, ...]

    @property
    def is_roce(self) -> bool:
        return self.link_layer == "Ethernet"

    @property
    def is_active(self) -> bool:
        return self.state_num == 4

    def ipv4_v2_gids(self) -> list[tuple[int, str, str | None]]:
        """(index, IPv4 address, netdev) of the IPv4-mapped RoCE v2 GIDs."""
        out = []
        for entry in self.gids:
            kind, ip = parse_gid(entry.gid)
            if kind == "ipv4" and entry.type == "RoCE v2":
                out.append((entry.index, ip, entry.ndev))
        return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):  # absent, EINVAL on empty GID slots, permissions
        return None


def parse_gid(gid: str) -> tuple[str, str]:
    """Classify a sysfs GID (8 groups of 4 hex digits): ("zero"|"link-local"|"ipv4"|"ipv6", address)."""
    groups = gid.strip().lower().split(":")
    if len(groups) != 8 or not all(re.fullmatch(r"[0-9a-f]{4}", g) for g in groups):
        return "zero", ""
    if all(g == "0000" for g in groups):
        return "zero", ""
    if groups[0] == "fe80":
        return "link-local", str(ipaddress.IPv6Address(":".join(groups)))
    if all(g == "0000" for g in groups[:5]) and groups[5] == "ffff":
        value = int(groups[6] + groups[7], 16)
        return "ipv4", str(ipaddress.IPv4Address(value))
    return "ipv6", str(ipaddress.IPv6Address(":".join(groups)))


def detect_roce(sysfs_root: str | Path = "/sys") -> list[RdmaPort]:
    """Every RDMA port under ``<root>/class/infiniband`` (RoCE and InfiniBand), sorted by device and port."""
    base = Path(sysfs_root) / "class" / "infiniband"
    if not base.is_dir():
        return []
    ports: list[RdmaPort] = []
    for dev in sorted(p for p in base.iterdir() if p.is_dir()):
        device_netdevs = sorted(n.name for n in (dev / "device" / "net").glob("*")) \
            if (dev / "device" / "net").is_dir() else []
        ports_dir = dev / "ports"
        if not ports_dir.is_dir():
            continue
        for port_dir in sorted((p for p in ports_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            state = _read(port_dir / "state")
            match = _STATE.match(state or "")
            gids = []
            gid_dir = port_dir / "gids"
            if gid_dir.is_dir():
                for gid_path in sorted((g for g in gid_dir.iterdir() if g.name.isdigit()), key=lambda g: int(g.name)):
                    value = _read(gid_path)
                    if value is None:
                        continue
                    gids.append(GidEntry(
                        index=int(gid_path.name), gid=value,
                        type=_read(port_dir / "gid_attrs" / "types" / gid_path.name),
                        ndev=_read(port_dir / "gid_attrs" / "ndevs" / gid_path.name) or None,
                    ))
            netdevs = sorted(set(device_netdevs) | {g.ndev for g in gids if g.ndev})
            ports.append(RdmaPort(
                device=dev.name, port=int(port_dir.name), link_layer=_read(port_dir / "link_layer"),
                state=state, state_num=int(match.group(1)) if match else None, rate=_read(port_dir / "rate"),
                netdevs=tuple(netdevs), gids=tuple(gids),
            ))
    return ports


def nccl_auto_gid_index(
    port: RdmaPort, family: str = "AF_INET", roce_version: int = 2, addr_range: str | None = None
) -> int | None:
    """The GID index NCCL (>= 2.21) would choose on a RoCE port, or None when no GID qualifies."""
    if not port.is_roce:
        return 0
    network = ipaddress.ip_network(addr_range, strict=False) if addr_range else None
    wanted = "ipv4" if family == "AF_INET" else "ipv6"

    def qualifies(entry: GidEntry) -> bool:
        kind, ip = parse_gid(entry.gid)
        if kind != wanted:
            return False
        if network is not None and ipaddress.ip_address(ip) not in network:
            return False
        version = {"RoCE v2": 2, "IB/RoCE v1": 1, "RoCE v1": 1}.get(entry.type or "")
        return version == roce_version

    for entry in port.gids:  # NCCL scans upwards and settles on the first fully matching entry
        if qualifies(entry):
            return entry.index
    return None


def format_ib_hca(hcas: Iterable[tuple[str, int | None]], exact: bool = True, exclude: bool = False) -> str:
    """``NCCL_IB_HCA`` value: ``[^][=]dev[:port],...`` (``^=`` to exclude exactly, never ``=^``)."""
    items = []
    for device, port in hcas:
        if not device or _BAD_NAME.search(device):
            raise ConfigError(f"HCA name {device!r} is not a device name (no ',', ':', '^', '=' or spaces).")
        if port is not None and port < 1:
            raise ConfigError(f"HCA {device!r}: port {port} is not a port number (ports start at 1).")
        items.append(device if port is None else f"{device}:{port}")
    if not items:
        raise ConfigError("no HCA given: NCCL_IB_HCA needs at least one device (e.g. mlx5_0:1).")
    return ("^" if exclude else "") + ("=" if exact else "") + ",".join(items)


@dataclass(frozen=True)
class FabricConfig:
    """What a profile's ``fabric:`` section (or detection) says about the network."""

    kind: str  # "roce" | "ib" | "socket"
    hcas: tuple[tuple[str, int | None], ...] = ()
    socket_ifname: str | None = None
    gid_index: int | None = None
    addr_family: str = "AF_INET"
    addr_range: str | None = None
    roce_version: int = 2
    traffic_class: int | None = None
    fifo_tc: int | None = None
    service_level: int | None = None
    qps_per_connection: int | None = None
    cross_nic: int | None = None
    #: Force NCCL onto this network (``NCCL_NET=IB``/``Socket``): a broken RoCE setup fails loudly
    #: instead of silently falling back to TCP sockets.
    strict: bool = False
    debug: str = "WARN"
    debug_subsys: str | None = None
    debug_file: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)


def _in_range(name: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise ConfigError(f"fabric: {name}={value} is outside {low}..{high}.")


def nccl_env(fabric: FabricConfig) -> dict[str, str]:
    """The NCCL variables for a fabric, to be exported before workers start (pure, deterministic)."""
    if fabric.kind not in ("roce", "ib", "socket"):
        raise ConfigError(f"fabric kind {fabric.kind!r}: expected roce, ib or socket.")
    env: dict[str, str] = {}
    if fabric.socket_ifname:
        if _BAD_NAME.search(fabric.socket_ifname):
            raise ConfigError(f"fabric: socket interface {fabric.socket_ifname!r} is not an interface name.")
        env["NCCL_SOCKET_IFNAME"] = "=" + fabric.socket_ifname
    elif fabric.kind in ("roce", "socket"):
        raise ConfigError(f"fabric {fabric.kind}: socket_ifname is required (e.g. ens1f0np0), NCCL would guess.")
    if fabric.kind == "socket":
        env["NCCL_IB_DISABLE"] = "1"
        if fabric.strict:
            env["NCCL_NET"] = "Socket"
    else:
        env["NCCL_IB_HCA"] = format_ib_hca(fabric.hcas)
        if fabric.kind == "ib" and (fabric.gid_index is not None or fabric.addr_range or fabric.roce_version != 2):
            raise ConfigError("fabric ib: GID index, address range and RoCE version apply to RoCE only.")
        if fabric.gid_index is not None:
            _in_range("gid_index", fabric.gid_index, 0, 255)
            env["NCCL_IB_GID_INDEX"] = str(fabric.gid_index)
        if fabric.addr_family not in ("AF_INET", "AF_INET6"):
            raise ConfigError(f"fabric: addr_family {fabric.addr_family!r}: expected AF_INET or AF_INET6.")
        if fabric.addr_family != "AF_INET":
            env["NCCL_IB_ADDR_FAMILY"] = fabric.addr_family
        if fabric.addr_range:
            try:
                net = ipaddress.ip_network(fabric.addr_range, strict=False)
            except ValueError as exc:
                raise ConfigError(f"fabric: addr_range {fabric.addr_range!r} is not a network: {exc}") from None
            if (net.version == 4) != (fabric.addr_family == "AF_INET"):
                raise ConfigError(f"fabric: addr_range {fabric.addr_range} does not match {fabric.addr_family}.")
            env["NCCL_IB_ADDR_RANGE"] = str(net)
        if fabric.roce_version != 2:
            env["NCCL_IB_ROCE_VERSION_NUM"] = str(fabric.roce_version)
        _in_range("traffic_class", fabric.traffic_class, 0, 255)
        _in_range("fifo_tc", fabric.fifo_tc, 0, 255)
        _in_range("service_level", fabric.service_level, 0, 15)
        _in_range("qps_per_connection", fabric.qps_per_connection, 1, 128)
        if fabric.traffic_class is not None:
            env["NCCL_IB_TC"] = str(fabric.traffic_class)
        if fabric.fifo_tc is not None:
            env["NCCL_IB_FIFO_TC"] = str(fabric.fifo_tc)
        if fabric.service_level is not None:
            env["NCCL_IB_SL"] = str(fabric.service_level)
        if fabric.qps_per_connection is not None:
            env["NCCL_IB_QPS_PER_CONNECTION"] = str(fabric.qps_per_connection)
        if fabric.strict:
            env["NCCL_NET"] = "IB"
    if fabric.cross_nic is not None:
        if fabric.cross_nic not in (0, 1, 2):
            raise ConfigError(f"fabric: cross_nic={fabric.cross_nic}: expected 0, 1 or 2.")
        env["NCCL_CROSS_NIC"] = str(fabric.cross_nic)
    if fabric.debug not in _DEBUG_LEVELS:
        raise ConfigError(f"fabric: debug={fabric.debug!r}: expected one of {', '.join(_DEBUG_LEVELS)}.")
    env["NCCL_DEBUG"] = fabric.debug
    if fabric.debug_subsys:
        env["NCCL_DEBUG_SUBSYS"] = fabric.debug_subsys
    if fabric.debug_file:
        # NCCL overwrites the file: one per host and process, or ranks clobber each other's logs.
        if "%h" not in fabric.debug_file or "%p" not in fabric.debug_file:
            raise ConfigError(f"fabric: debug_file {fabric.debug_file!r} must contain %h and %p (host, pid), "
                              "e.g. /scratch/$USER/nccl.%h.%p.log.")
        env["NCCL_DEBUG_FILE"] = fabric.debug_file
    for name, value in fabric.overrides.items():
        if name not in _DEBUG_OVERRIDES:
            raise ConfigError(f"fabric override {name!r} is not one of {sorted(_DEBUG_OVERRIDES)}.")
        allowed = _DEBUG_OVERRIDES[name]
        if allowed is not None and str(value) not in allowed:
            raise ConfigError(f"fabric override {name}={value!r}: expected one of {sorted(allowed)}.")
        env[name] = str(value)
    return env


def torch_dist_env(fabric: FabricConfig) -> dict[str, str]:
    """gloo's interface (a plain name: gloo does not understand NCCL's ``=`` prefix)."""
    return {"GLOO_SOCKET_IFNAME": fabric.socket_ifname} if fabric.socket_ifname else {}


def write_nccl_conf(path: str | Path, env: Mapping[str, str]) -> Path:
    """Write ``env`` as an NCCL configuration file (for ``NCCL_CONF_FILE``): ``KEY=value`` lines, no
    quotes (NCCL keeps quotes as part of the value)."""
    target = Path(path)
    lines = []
    for key, value in env.items():
        if not key.startswith("NCCL_") or "\n" in value:
            raise ConfigError(f"{key}={value!r} cannot go into an NCCL configuration file.")
        lines.append(f"{key}={value}")
    target.write_text("\n".join(lines) + "\n")
    return target


def fabric_from_sysfs(
    sysfs_root: str | Path = "/sys", *, prefer_netdev: str | None = None, traffic_class: int | None = None,
    nccl_version: tuple[int, int, int] | None = None,
) -> FabricConfig | None:
    """A RoCE fabric from the active RoCE ports that carry an IPv4 RoCE v2 GID; None when there is none.

    ``nccl_version`` below 2.21 pins ``NCCL_IB_GID_INDEX`` (older NCCL does not choose the IPv4 RoCE v2
    GID itself); newer versions, or unknown, leave it to NCCL."""
    chosen: list[tuple[RdmaPort, tuple[int, str, str | None]]] = []
    for port in detect_roce(sysfs_root):
        if not (port.is_roce and port.is_active):
            continue
        for gid in port.ipv4_v2_gids():
            if prefer_netdev is None or gid[2] == prefer_netdev:
                chosen.append((port, gid))
                break
    if not chosen:
        return None
    ifname = chosen[0][1][2] or (chosen[0][0].netdevs[0] if chosen[0][0].netdevs else None)
    gid_index = None
    if nccl_version is not None and nccl_version < (2, 21, 0):
        gid_index = nccl_auto_gid_index(chosen[0][0])
    return FabricConfig(
        kind="roce",
        hcas=tuple((port.device, port.port) for port, _ in chosen),
        socket_ifname=ifname,
        gid_index=gid_index,
        traffic_class=traffic_class,
    )
