"""A profile's `fabric:` section: typed and validated when the profile loads, exported by the SLURM job prologue."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.clusters.profiles import Profile, get_profile
from mltf_flow.clusters.slurm import slurm_cluster_kwargs
from mltf_flow.config.fabric import FabricSettings
from mltf_flow.config.schema import validate
from mltf_flow.errors import ConfigError

WriteCwd = Callable[[object], Path]

ROCE = {"kind": "roce", "hcas": ["mlx5_0:1"], "socket_ifname": "ens1f0np0", "traffic_class": 106}


def profile_with(write: WriteCwd, settings: dict[str, Any], name: str = "fab") -> Profile:
    write({name: {"extends": "slurm", **settings}})
    return get_profile(name)


def prologue(profile: Profile, tmp_path: Path) -> list[str]:
    lines: list[str] = slurm_cluster_kwargs(profile, tmp_path / "logs")["job_script_prologue"]
    return lines


def exported(lines: list[str]) -> dict[str, str]:
    """NAME -> value as bash sees it after `export NAME=...` (quotes removed)."""
    out = {}
    for line in lines:
        words = shlex.split(line)
        if words[:1] == ["export"]:
            name, _, value = words[1].partition("=")
            out[name] = value
    return out


def test_explicit_roce_is_exported_in_the_prologue(tmp_path: Path, write_profiles: WriteCwd) -> None:
    profile = profile_with(write_profiles, {"fabric": ROCE})
    assert profile.fabric == validate(FabricSettings, ROCE, "test")
    lines = prologue(profile, tmp_path)
    # shlex.quote leaves "=mlx5_0:1" bare ('=' and ':' are shell-safe): bash reads the value after the first '='.
    assert shlex.quote("=mlx5_0:1") == "=mlx5_0:1"
    assert "export NCCL_IB_HCA==mlx5_0:1" in lines
    assert "export NCCL_SOCKET_IFNAME==ens1f0np0" in lines
    assert "export NCCL_IB_TC=106" in lines
    assert "export GLOO_SOCKET_IFNAME=ens1f0np0" in lines
    env = exported(lines)
    assert env["NCCL_IB_HCA"] == "=mlx5_0:1"  # what the worker process really gets
    assert env["NCCL_SOCKET_IFNAME"] == "=ens1f0np0"
    assert env["NCCL_DEBUG"] == "WARN"


def test_fabric_exports_come_after_the_profiles_own_prologue(tmp_path: Path, write_profiles: WriteCwd) -> None:
    profile = profile_with(write_profiles, {"fabric": ROCE, "prologue": ["module load cuda"]})
    lines = prologue(profile, tmp_path)
    assert lines[0] == "module load cuda"
    assert lines.index("export NCCL_IB_TC=106") > 0


def test_auto_fabric_exports_nothing(tmp_path: Path, write_profiles: WriteCwd) -> None:
    profile = profile_with(write_profiles, {"fabric": {"kind": "auto", "traffic_class": 106, "strict": True},
                                                "interface": "ib0"})
    assert profile.fabric == FabricSettings(kind="auto", traffic_class=106, strict=True)
    lines = prologue(profile, tmp_path)
    assert not [line for line in lines if line.startswith(("export NCCL_", "export GLOO_"))]


def test_shipped_default_fabric_exports_nothing(tmp_path: Path, write_profiles: WriteCwd) -> None:
    profile = profile_with(write_profiles, {})
    assert profile.fabric == FabricSettings(kind="auto")  # the shipped profiles' default
    assert not [line for line in prologue(profile, tmp_path) if "NCCL_" in line or "GLOO_" in line]


def test_fabric_defaults_to_kind_auto(write_profiles: WriteCwd) -> None:
    assert profile_with(write_profiles, {"fabric": {"strict": True}}).fabric == FabricSettings(strict=True, kind="auto")


def test_child_fabric_replaces_the_parents(write_profiles: WriteCwd) -> None:
    write_profiles({
        "base": {"extends": "slurm", "fabric": ROCE},
        "child": {"extends": "base", "fabric": {"kind": "none"}},
    })
    assert get_profile("base").fabric == validate(FabricSettings, ROCE, "test")
    assert get_profile("child").fabric == FabricSettings(kind="none")


def test_bad_fabric_names_file_and_profile(write_profiles: WriteCwd) -> None:
    path = write_profiles({"bad": {"extends": "slurm", "fabric": {"kind": "roce", "traffic_class": 999}}})
    with pytest.raises(ConfigError) as info:
        get_profile("bad")
    assert str(path.resolve()) in str(info.value)
    assert "profile 'bad'" in str(info.value)


def test_out_of_range_traffic_class_is_reported(write_profiles: WriteCwd) -> None:
    path = write_profiles({"bad": {"extends": "slurm", "fabric": {**ROCE, "traffic_class": 999}}})
    with pytest.raises(ConfigError, match=r"traffic_class=999 is outside 0\.\.255") as info:
        get_profile("bad")
    assert str(info.value).startswith(f"{path.resolve()}: profile 'bad'")


def test_auto_traffic_class_is_checked_at_load(write_profiles: WriteCwd) -> None:
    write_profiles({"bad": {"extends": "slurm", "fabric": {"kind": "auto", "traffic_class": 999}}})
    with pytest.raises(ConfigError, match=r"profile 'bad'.*traffic_class=999"):
        get_profile("bad")


def test_unknown_fabric_key(write_profiles: WriteCwd) -> None:
    write_profiles({"bad": {"extends": "slurm", "fabric": {"kind": "roce", "tc": 106}}})
    with pytest.raises(ConfigError, match=r"profile 'bad': fabric: unknown key\(s\) tc"):
        get_profile("bad")


def test_fabric_from_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_SET__SLURM__FABRIC", "{kind: carrier-pigeon}")
    with pytest.raises(ConfigError, match=r"\$MLTF_FLOW_SET__SLURM__FABRIC: profile 'slurm': fabric kind"):
        get_profile("slurm")


def test_gpus_add_cuda_device_order(tmp_path: Path, write_profiles: WriteCwd) -> None:
    gpu = profile_with(write_profiles, {"gpus_per_node": 2, "cores": 2}, name="gpu")
    assert "export CUDA_DEVICE_ORDER=PCI_BUS_ID" in prologue(gpu, tmp_path)
    cpu = profile_with(write_profiles, {"gpus_per_node": 0}, name="cpu")
    assert not [line for line in prologue(cpu, tmp_path) if "CUDA_DEVICE_ORDER" in line]


def test_gpus_and_fabric_together(tmp_path: Path, write_profiles: WriteCwd) -> None:
    profile = profile_with(write_profiles, {"gpus_per_node": 4, "cores": 8, "fabric": ROCE})
    env = exported(prologue(profile, tmp_path))
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["MLTF_GPUS_PER_JOB"] == "4"
    assert env["NCCL_IB_HCA"] == "=mlx5_0:1"


def test_socket_fabric_takes_the_profiles_interface(tmp_path: Path, write_profiles: WriteCwd) -> None:
    profile = profile_with(write_profiles, {"interface": "ib0", "fabric": {"kind": "socket"}})
    env = exported(prologue(profile, tmp_path))
    assert env["NCCL_SOCKET_IFNAME"] == "=ib0"
    assert env["NCCL_IB_DISABLE"] == "1"


def test_socket_fabric_without_any_interface_is_refused(write_profiles: WriteCwd) -> None:
    with pytest.raises(ConfigError, match="needs socket_ifname"):
        profile_with(write_profiles, {"fabric": {"kind": "socket"}})
