"""NCCL fabric detection and environment, on fake sysfs trees (plain directories and real symlinks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mltf_flow.errors import ConfigError
from mltf_flow.fabric.nccl import (
    FabricConfig,
    detect_roce,
    fabric_from_sysfs,
    format_ib_hca,
    nccl_auto_gid_index,
    nccl_env,
    parse_gid,
    torch_dist_env,
)

LINK_LOCAL = "fe80:0000:0000:0000:0e42:a1ff:fe00:0001"
V4 = "0000:0000:0000:0000:0000:ffff:0ac8:010a"  # 10.200.1.10
V6 = "2001:0db8:0000:0000:0000:0000:0000:0010"
ZERO = "0000:0000:0000:0000:0000:0000:0000:0000"


def connectx(gids: list[tuple[str, str | None]], ndev: str = "ens1f0np0") -> dict[str, Any]:
    return {"link_layer": "Ethernet", "state": "4: ACTIVE", "rate": "100 Gb/sec (4X EDR)",
            "gids": [(g, t, ndev if t else None) for g, t in gids]}


TYPICAL = connectx([(LINK_LOCAL, "IB/RoCE v1"), (LINK_LOCAL, "RoCE v2"), (V4, "IB/RoCE v1"), (V4, "RoCE v2"),
                    (V6, "IB/RoCE v1"), (V6, "RoCE v2")])


def fake_sysfs(root: Path, devices: dict[str, dict[int, dict[str, Any]]], netdevs: dict[str, str] | None = None,
               symlinks: bool = False) -> Path:
    """Build <root>/class/infiniband/<dev>/ports/<p>/... like the kernel's (optionally behind symlinks,
    as /sys/class/* entries really are)."""
    base = root / "class" / "infiniband"
    base.mkdir(parents=True)
    for dev, ports in devices.items():
        real = (root / "devices" / "pci0000:00" / dev) if symlinks else base / dev
        real.mkdir(parents=True)
        if symlinks:
            (base / dev).symlink_to(real)
        for number, spec in ports.items():
            port = real / "ports" / str(number)
            (port / "gids").mkdir(parents=True)
            (port / "gid_attrs" / "types").mkdir(parents=True)
            (port / "gid_attrs" / "ndevs").mkdir(parents=True)
            for key in ("link_layer", "state", "rate"):
                if key in spec:
                    (port / key).write_text(spec[key] + "\n")
            for index, (gid, gtype, ndev) in enumerate(spec.get("gids", [])):
                (port / "gids" / str(index)).write_text(gid + "\n")
                if gtype is not None:  # missing file = the kernel's EINVAL for an empty slot
                    (port / "gid_attrs" / "types" / str(index)).write_text(gtype + "\n")
                if ndev is not None:
                    (port / "gid_attrs" / "ndevs" / str(index)).write_text(ndev + "\n")
        if netdevs and dev in netdevs:
            (real / "device" / "net" / netdevs[dev]).mkdir(parents=True)
    return root


@pytest.mark.parametrize("symlinks", [False, True])
def test_typical_connectx_table(tmp_path: Path, symlinks: bool) -> None:
    root = fake_sysfs(tmp_path, {"mlx5_0": {1: TYPICAL}}, {"mlx5_0": "ens1f0np0"}, symlinks=symlinks)
    (port,) = detect_roce(root)
    assert (port.device, port.port, port.is_roce, port.is_active) == ("mlx5_0", 1, True, True)
    assert port.netdevs == ("ens1f0np0",)
    assert port.ipv4_v2_gids() == [(3, "10.200.1.10", "ens1f0np0")]
    assert nccl_auto_gid_index(port) == 3


def test_ipv4_roce_v2_at_a_non_default_index(tmp_path: Path) -> None:
    spec = connectx([(LINK_LOCAL, "IB/RoCE v1"), (LINK_LOCAL, "RoCE v2"), (V6, "IB/RoCE v1"), (V6, "RoCE v2"),
                     (V4, "IB/RoCE v1"), (V4, "RoCE v2")])
    (port,) = detect_roce(fake_sysfs(tmp_path, {"mlx5_0": {1: spec}}))
    assert nccl_auto_gid_index(port) == 5
    assert nccl_auto_gid_index(port, family="AF_INET6") == 3
    assert nccl_auto_gid_index(port, addr_range="10.200.0.0/16") == 5
    assert nccl_auto_gid_index(port, addr_range="192.168.0.0/16") is None


def test_down_port_and_infiniband_link_layer(tmp_path: Path) -> None:
    down = {**TYPICAL, "state": "1: DOWN"}
    ib = {"link_layer": "InfiniBand", "state": "4: ACTIVE", "gids": [(LINK_LOCAL, None, None)]}
    root = fake_sysfs(tmp_path, {"mlx5_0": {1: down}, "mlx5_2": {1: ib}})
    ports = detect_roce(root)
    assert [(p.device, p.is_active, p.is_roce) for p in ports] == [("mlx5_0", False, True), ("mlx5_2", True, False)]
    assert nccl_auto_gid_index(ports[1]) == 0  # InfiniBand: GID 0
    assert fabric_from_sysfs(root) is None  # no active RoCE port


def test_missing_attribute_files_and_empty_slots(tmp_path: Path) -> None:
    spec = {"link_layer": "Ethernet", "gids": [(ZERO, None, None), (V4, None, None), (V4, "RoCE v2", None)]}
    (port,) = detect_roce(fake_sysfs(tmp_path, {"mlx5_0": {1: spec}}))
    assert port.state is None and port.state_num is None and port.rate is None
    assert [g.type for g in port.gids] == [None, None, "RoCE v2"]
    assert nccl_auto_gid_index(port) == 2


def test_mlx5_1_next_to_mlx5_10_stays_exact(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, {"mlx5_1": {1: TYPICAL}, "mlx5_10": {1: connectx([(V4, "RoCE v2")], "ens9")}})
    fabric = fabric_from_sysfs(root, prefer_netdev="ens1f0np0")
    assert fabric is not None and fabric.hcas == (("mlx5_1", 1),)
    env = nccl_env(fabric)
    assert env["NCCL_IB_HCA"] == "=mlx5_1:1"  # without '=', mlx5_1 would also select mlx5_10
    assert env["NCCL_SOCKET_IFNAME"] == "=ens1f0np0"
    assert "NCCL_IB_GID_INDEX" not in env and "NCCL_IB_DISABLE" not in env
    assert torch_dist_env(fabric) == {"GLOO_SOCKET_IFNAME": "ens1f0np0"}


def test_no_infiniband_class_means_no_ports(tmp_path: Path) -> None:
    assert detect_roce(tmp_path) == []
    assert fabric_from_sysfs(tmp_path) is None


@pytest.mark.parametrize(("gid", "expected"), [
    (ZERO, ("zero", "")), (LINK_LOCAL, ("link-local", "fe80::e42:a1ff:fe00:1")), (V4, ("ipv4", "10.200.1.10")),
    (V6, ("ipv6", "2001:db8::10")), ("garbage", ("zero", "")),
])
def test_parse_gid(gid: str, expected: tuple[str, str]) -> None:
    assert parse_gid(gid) == expected


def test_format_ib_hca() -> None:
    assert format_ib_hca([("mlx5_0", 1), ("mlx5_3", None)]) == "=mlx5_0:1,mlx5_3"
    assert format_ib_hca([("mlx5_2", 1)], exclude=True) == "^=mlx5_2:1"
    for bad in ([], [("mlx5_0:1", None)], [("mlx5 0", 1)], [("mlx5_0", 0)]):
        with pytest.raises(ConfigError):
            format_ib_hca(bad)


def test_nccl_env_golden_and_site_values() -> None:
    fabric = FabricConfig(kind="roce", hcas=(("mlx5_0", 1),), socket_ifname="ens1f0np0", traffic_class=106,
                          service_level=3, overrides={"NCCL_NET_GDR_LEVEL": "PHB"})
    assert nccl_env(fabric) == {
        "NCCL_SOCKET_IFNAME": "=ens1f0np0", "NCCL_IB_HCA": "=mlx5_0:1", "NCCL_IB_TC": "106", "NCCL_IB_SL": "3",
        "NCCL_DEBUG": "WARN", "NCCL_NET_GDR_LEVEL": "PHB",
    }
    assert nccl_env(FabricConfig(kind="socket", socket_ifname="eth0"))["NCCL_IB_DISABLE"] == "1"


@pytest.mark.parametrize("changes", [
    {"traffic_class": 256}, {"service_level": 16}, {"hcas": ()}, {"socket_ifname": None}, {"cross_nic": 3},
    {"overrides": {"NCCL_NET_GDR_LEVEL": "5"}}, {"overrides": {"NCCL_MADE_UP": "1"}},
    {"addr_range": "not-a-net"}, {"addr_range": "2001:db8::/32"}, {"kind": "carrier-pigeon"},
])
def test_nccl_env_rejects_bad_values(changes: dict[str, Any]) -> None:
    base: dict[str, Any] = {"kind": "roce", "hcas": (("mlx5_0", 1),), "socket_ifname": "ens1f0np0"}
    with pytest.raises(ConfigError):
        nccl_env(FabricConfig(**{**base, **changes}))


def test_doctor_prints_the_detected_fabric_and_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mltf_flow.cli import main

    root = fake_sysfs(tmp_path / "sys", {"mlx5_0": {1: TYPICAL}}, {"mlx5_0": "ens1f0np0"})
    monkeypatch.setenv("MLTF_SYSFS_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", "--profile", "local"]) == 0
    out = capsys.readouterr().out
    assert "mlx5_0:1 Ethernet 4: ACTIVE netdevs=ens1f0np0" in out
    assert "NCCL_SOCKET_IFNAME==ens1f0np0 NCCL_IB_HCA==mlx5_0:1 NCCL_DEBUG=WARN" in out
