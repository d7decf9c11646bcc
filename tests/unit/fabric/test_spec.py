"""A profile's fabric section: validation (check_fabric), resolution on a node (resolve_fabric), prologue
values (static_env), and the NCCL environment / configuration file they produce."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# pytest (rootdir-relative "prepend" import mode) puts this folder on sys.path: `tests.unit...` is not
# importable under `.venv/bin/pytest` (no tests/__init__.py, repository root not on sys.path).
from test_nccl import TYPICAL, fake_sysfs

from mltf_flow.config.fabric import FabricSettings
from mltf_flow.config.schema import dump
from mltf_flow.errors import ConfigError
from mltf_flow.fabric.nccl import FabricConfig, nccl_env, write_nccl_conf
from mltf_flow.fabric.spec import KINDS, check_fabric, resolve_fabric, static_env

WHERE = "/site/profiles.yaml: profile 'gpu'"


def typical_root(tmp_path: Path) -> Path:
    return fake_sysfs(tmp_path / "sys", {"mlx5_0": {1: TYPICAL}}, {"mlx5_0": "ens1f0np0"})


# --------------------------------------------------------------------------------------------- kind: auto


def test_auto_on_a_typical_connectx_port(tmp_path: Path) -> None:
    fabric = resolve_fabric({"kind": "auto"}, interface=None, sysfs_root=typical_root(tmp_path))
    assert fabric.env["NCCL_IB_HCA"] == "=mlx5_0:1"
    assert fabric.env["NCCL_SOCKET_IFNAME"] == "=ens1f0np0"
    assert fabric.env["GLOO_SOCKET_IFNAME"] == "ens1f0np0"
    assert "NCCL_IB_GID_INDEX" not in fabric.env  # NCCL >= 2.21 (or unknown) picks it itself
    assert "NCCL_IB_TC" not in fabric.env and "NCCL_NET" not in fabric.env
    assert fabric.config is not None and fabric.config.kind == "roce"
    assert "auto detected RoCE mlx5_0:1 via ens1f0np0" in fabric.note


def test_auto_with_site_values(tmp_path: Path) -> None:
    spec = {"kind": "auto", "traffic_class": 106, "strict": True}
    env = resolve_fabric(spec, interface="ib0", sysfs_root=typical_root(tmp_path)).env
    assert env["NCCL_IB_TC"] == "106"
    assert env["NCCL_NET"] == "IB"
    assert env["NCCL_IB_HCA"] == "=mlx5_0:1"
    assert env["GLOO_SOCKET_IFNAME"] == "ens1f0np0"  # the detected port's netdev, not the profile's interface


def test_auto_more_site_values(tmp_path: Path) -> None:
    spec = {"kind": "auto", "fifo_tc": 98, "service_level": 3, "debug": "INFO", "debug_subsys": "INIT,NET",
            "overrides": {"NCCL_NET_GDR_LEVEL": "PHB"}}
    env = resolve_fabric(spec, interface=None, sysfs_root=typical_root(tmp_path)).env
    assert (env["NCCL_IB_FIFO_TC"], env["NCCL_IB_SL"], env["NCCL_DEBUG"]) == ("98", "3", "INFO")
    assert (env["NCCL_DEBUG_SUBSYS"], env["NCCL_NET_GDR_LEVEL"]) == ("INIT,NET", "PHB")


@pytest.mark.parametrize(("version", "gid"), [((2, 18, 3), "3"), ((2, 20, 99), "3"), ((2, 21, 0), None)])
def test_auto_pins_the_gid_index_for_old_nccl(tmp_path: Path, version: tuple[int, int, int], gid: str | None) -> None:
    env = resolve_fabric({"kind": "auto"}, interface=None, sysfs_root=typical_root(tmp_path),
                         nccl_version=version).env
    assert env.get("NCCL_IB_GID_INDEX") == gid  # 3: the IPv4 RoCE v2 entry of TYPICAL


def test_auto_explicit_gid_index_wins(tmp_path: Path) -> None:
    env = resolve_fabric({"kind": "auto", "gid_index": 7}, interface=None, sysfs_root=typical_root(tmp_path),
                         nccl_version=(2, 18, 3)).env
    assert env["NCCL_IB_GID_INDEX"] == "7"


def test_auto_reads_mltf_sysfs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_SYSFS_ROOT", str(typical_root(tmp_path)))
    assert resolve_fabric(None, interface=None).env["NCCL_IB_HCA"] == "=mlx5_0:1"


def test_auto_without_rdma_falls_back_to_sockets(tmp_path: Path) -> None:
    fabric = resolve_fabric({"kind": "auto"}, interface="ib0", sysfs_root=tmp_path)  # no class/infiniband
    assert fabric.config is None
    assert fabric.env == {"NCCL_SOCKET_IFNAME": "=ib0", "NCCL_DEBUG": "WARN", "GLOO_SOCKET_IFNAME": "ib0"}
    assert "sockets" in fabric.note.lower() and "ib0" in fabric.note
    # the site's debug settings still apply; nothing disables InfiniBand
    debug = resolve_fabric({"kind": "auto", "debug": "INFO", "debug_subsys": "INIT,NET",
                            "overrides": {"NCCL_P2P_LEVEL": "NVL"}}, interface="ib0", sysfs_root=tmp_path)
    assert debug.env["NCCL_DEBUG"] == "INFO" and debug.env["NCCL_DEBUG_SUBSYS"] == "INIT,NET"
    assert debug.env["NCCL_P2P_LEVEL"] == "NVL" and "NCCL_IB_DISABLE" not in debug.env


def test_auto_without_rdma_and_without_interface(tmp_path: Path) -> None:
    fabric = resolve_fabric({"kind": "auto"}, interface=None, sysfs_root=tmp_path)
    assert fabric.env == {"NCCL_DEBUG": "WARN"}
    assert "default route" in fabric.note


def test_auto_strict_without_rdma_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"strict RoCE requested but no active RoCE port"):
        resolve_fabric({"kind": "auto", "strict": True}, interface="ib0", sysfs_root=tmp_path)


def test_auto_ignores_a_down_port(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "sys", {"mlx5_0": {1: {**TYPICAL, "state": "1: DOWN"}}})
    assert resolve_fabric({"kind": "auto"}, interface="ib0", sysfs_root=root).config is None


# --------------------------------------------------------------------------------------------- explicit kinds


def test_kind_none() -> None:
    fabric = resolve_fabric({"kind": "none"}, interface="ib0")
    assert fabric.env == {}
    assert fabric.config is None
    assert "none" in fabric.note


def test_kind_socket_uses_the_interface() -> None:
    env = resolve_fabric({"kind": "socket", "socket_ifname": "eth2"}, interface="ib0").env
    assert env["NCCL_IB_DISABLE"] == "1"
    assert env["NCCL_SOCKET_IFNAME"] == "=eth2"  # the fabric's own interface wins
    assert env["GLOO_SOCKET_IFNAME"] == "eth2"
    assert "NCCL_IB_HCA" not in env and "NCCL_NET" not in env
    filled = resolve_fabric({"kind": "socket"}, interface="ib0").env
    assert (filled["NCCL_SOCKET_IFNAME"], filled["GLOO_SOCKET_IFNAME"]) == ("=ib0", "ib0")


def test_kind_roce_exact_hcas() -> None:
    spec = {"kind": "roce", "hcas": ["mlx5_0:1", "mlx5_1:1"], "socket_ifname": "ens1f0np0"}
    fabric = resolve_fabric(spec, interface=None)
    assert fabric.env["NCCL_IB_HCA"] == "=mlx5_0:1,mlx5_1:1"
    assert fabric.env["NCCL_SOCKET_IFNAME"] == "=ens1f0np0"
    assert fabric.env["GLOO_SOCKET_IFNAME"] == "ens1f0np0"
    assert fabric.env["NCCL_DEBUG"] == "WARN"
    assert "NCCL_IB_DISABLE" not in fabric.env
    assert fabric.note == "fabric: roce (from the profile)"


def test_kind_roce_without_any_interface() -> None:
    with pytest.raises(ConfigError, match="socket_ifname is required"):
        resolve_fabric({"kind": "roce", "hcas": ["mlx5_0:1"]}, interface=None)


def test_kind_ib_gets_gloo_from_the_interface() -> None:
    env = resolve_fabric({"kind": "ib", "hcas": ["mlx5_0"]}, interface="ib0").env
    assert env["NCCL_IB_HCA"] == "=mlx5_0"
    assert env["GLOO_SOCKET_IFNAME"] == "ib0"


# --------------------------------------------------------------------------------------------- check_fabric


def test_check_fabric_types_the_section() -> None:
    assert check_fabric(None, WHERE) is None
    assert check_fabric({}, WHERE) == FabricSettings(kind="auto")
    assert check_fabric({"strict": True, "traffic_class": 106}, WHERE) == FabricSettings(
        strict=True, traffic_class=106, kind="auto")
    spec = {"kind": "roce", "hcas": ["mlx5_0:1"], "socket_ifname": "ens1f0np0"}
    typed = check_fabric(spec, WHERE)
    assert typed is not None and typed.hca_ports() == (("mlx5_0", 1),)
    assert dump(typed) == spec  # what a job's spec.json holds
    assert set(KINDS) == {"auto", "roce", "ib", "socket", "none"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"kind": "roce", "hca": ["mlx5_0:1"]}, r"unknown key\(s\) hca"),
        ({"kind": "carrier-pigeon"}, r"fabric kind 'carrier-pigeon'"),
        ({"kind": "auto", "traffic_class": 300}, r"traffic_class=300 is outside 0\.\.255"),
        ({"kind": "auto", "traffic_class": "106"}, r"traffic_class: expected a whole number"),
        ({"kind": "auto", "strict": True, "traffic_class": True}, r"traffic_class: expected a whole number"),
        ({"kind": "roce", "hcas": ["mlx5_0:x"], "socket_ifname": "ens1f0np0"}, r"fabric hca 'mlx5_0:x'"),
        ({"kind": "roce", "hcas": "mlx5_0:1", "socket_ifname": "ens1f0np0"}, r"hcas: expected a list"),
        ({"kind": "roce", "hcas": ["mlx5_0:1"], "socket_ifname": "e0", "debug_file": "/tmp/nccl.log"},
         r"must contain %h and %p"),
        ({"kind": "auto", "debug_file": "/tmp/nccl.%h.log"}, r"must contain %h and %p"),
        ({"kind": "auto", "debug": "LOUD"}, r"debug='LOUD'"),
        ({"kind": "auto", "socket_ifname": 5}, r"socket_ifname: expected a string"),
        ({"kind": "auto", "overrides": ["NCCL_ALGO"]}, r"overrides: expected a mapping"),
        ({"kind": "auto", "overrides": {"NCCL_IB_HCA": "mlx5_1"}}, r"override 'NCCL_IB_HCA' is not one of"),
        ({"kind": "socket", "socket_ifname": "eth0", "fifo_tc": 256}, None),  # socket: IB values unused
        ("roce", r"key 'fabric': expected a mapping"),
        (["kind", "roce"], r"key 'fabric': expected a mapping"),
    ],
)
def test_check_fabric_errors_name_where(value: Any, message: str | None) -> None:
    if message is None:
        check_fabric(value, WHERE)
        return
    with pytest.raises(ConfigError, match=message) as info:
        check_fabric(value, WHERE)
    assert str(info.value).startswith(WHERE)


# --------------------------------------------------------------------------------------------- static_env


@pytest.mark.parametrize("spec", [None, {}, {"kind": "auto"}, {"kind": "auto", "traffic_class": 106}])
def test_static_env_is_empty_for_auto(spec: dict[str, Any] | None) -> None:
    assert static_env(spec, "ib0") == {}


def test_static_env_of_explicit_roce() -> None:
    spec = {"kind": "roce", "hcas": ["mlx5_0:1"], "socket_ifname": "ens1f0np0", "traffic_class": 106}
    env = static_env(spec, "ib0")
    assert env == resolve_fabric(spec, interface="ib0").env
    assert env["NCCL_IB_HCA"] == "=mlx5_0:1"
    assert env["NCCL_IB_TC"] == "106"


def test_static_env_of_none_and_socket() -> None:
    assert static_env({"kind": "none"}, "ib0") == {}
    assert static_env({"kind": "socket"}, "ib0")["NCCL_SOCKET_IFNAME"] == "=ib0"


# --------------------------------------------------------------------------------------------- nccl_env


def roce(**kw: Any) -> FabricConfig:
    return FabricConfig(kind="roce", hcas=(("mlx5_0", 1),), socket_ifname="ens1f0np0", **kw)


def test_strict_socket_forces_the_socket_network() -> None:
    env = nccl_env(FabricConfig(kind="socket", socket_ifname="eth0", strict=True))
    assert env["NCCL_NET"] == "Socket"
    assert env["NCCL_IB_DISABLE"] == "1"
    assert nccl_env(roce(strict=True))["NCCL_NET"] == "IB"
    assert "NCCL_NET" not in nccl_env(roce())


def test_fifo_tc_and_qps_are_emitted() -> None:
    env = nccl_env(roce(fifo_tc=0, qps_per_connection=4))
    assert env["NCCL_IB_FIFO_TC"] == "0"
    assert env["NCCL_IB_QPS_PER_CONNECTION"] == "4"
    assert nccl_env(roce(fifo_tc=255, qps_per_connection=128))["NCCL_IB_QPS_PER_CONNECTION"] == "128"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"fifo_tc": 256}, r"fifo_tc=256 is outside 0\.\.255"),
        ({"fifo_tc": -1}, r"fifo_tc=-1 is outside"),
        ({"qps_per_connection": 0}, r"qps_per_connection=0 is outside 1\.\.128"),
        ({"qps_per_connection": 129}, r"qps_per_connection=129 is outside 1\.\.128"),
        ({"debug": "LOUD"}, r"debug='LOUD'"),
        ({"debug_file": "/scratch/nccl.%p.log"}, r"must contain %h and %p"),
    ],
)
def test_nccl_env_rejects(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        nccl_env(roce(**kw))


def test_debug_subsys_and_file() -> None:
    env = nccl_env(roce(debug="INFO", debug_subsys="INIT,NET", debug_file="/scratch/nccl.%h.%p.log"))
    assert env["NCCL_DEBUG"] == "INFO"
    assert env["NCCL_DEBUG_SUBSYS"] == "INIT,NET"
    assert env["NCCL_DEBUG_FILE"] == "/scratch/nccl.%h.%p.log"
    assert "NCCL_DEBUG_SUBSYS" not in nccl_env(roce()) and "NCCL_DEBUG_FILE" not in nccl_env(roce())


# --------------------------------------------------------------------------------------------- nccl.conf


def test_write_nccl_conf(tmp_path: Path) -> None:
    env = {"NCCL_IB_HCA": "=mlx5_0:1", "NCCL_SOCKET_IFNAME": "=ens1f0np0", "NCCL_IB_TC": "106"}
    path = write_nccl_conf(tmp_path / "nccl.conf", env)
    assert path == tmp_path / "nccl.conf"
    assert path.read_text() == "NCCL_IB_HCA==mlx5_0:1\nNCCL_SOCKET_IFNAME==ens1f0np0\nNCCL_IB_TC=106\n"
    assert "'" not in path.read_text() and '"' not in path.read_text()


@pytest.mark.parametrize("env", [{"GLOO_SOCKET_IFNAME": "eth0"}, {"NCCL_DEBUG": "WARN\nNCCL_NET=IB"}])
def test_write_nccl_conf_rejects(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="cannot go into an NCCL configuration file"):
        write_nccl_conf(tmp_path / "nccl.conf", env)
    assert not (tmp_path / "nccl.conf").exists()
