"""GPUDirect Storage helpers without a GPU: cufile.json, the node probe on fake /proc and /sys trees, gdscheck
output, the profile's gds section, and byte-exact reads through the posix backend."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.errors import ConfigError
from mltf_flow.fabric.gds import (
    BackendUnavailable,
    CufileConfig,
    align_down,
    align_up,
    cufile_config,
    gds_settings,
    parse_gdscheck,
    probe_gds,
    read_tensor,
    write_cufile_json,
)

DATA = Path(__file__).parent / "data"


def test_default_cufile_json_is_golden(tmp_path: Path) -> None:
    path = write_cufile_json(tmp_path / "job" / "cufile.json", CufileConfig())
    assert json.loads(path.read_text()) == {
        "execution": {"max_io_threads": 4, "parallel_io": True},
        "fs": {"generic": {"posix_unaligned_writes": False}},
        "logging": {"level": "ERROR"},
        "profile": {"cufile_stats": 0},
        "properties": {"allow_compat_mode": True, "max_device_cache_size_kb": 131072,
                       "max_device_pinned_mem_size_kb": 33554432, "max_direct_io_size_kb": 16384,
                       "poll_mode_max_size_kb": 4, "rdma_dev_addr_list": [], "use_poll_mode": False},
    }
    assert not [p for p in path.parent.iterdir() if p.name != "cufile.json"]  # no temp file left


def test_custom_cufile_json_always_says_allow_compat_mode(tmp_path: Path) -> None:
    config = cufile_config({"allow_compat_mode": False, "log_level": "TRACE", "log_dir": "/scratch/logs",
                            "rdma_dev_addr_list": ["10.0.0.5"], "cufile_stats": 3, "max_io_threads": 8})
    doc = json.loads(write_cufile_json(tmp_path / "c.json", config).read_text())
    assert doc["properties"]["allow_compat_mode"] is False
    assert doc["logging"] == {"level": "TRACE", "dir": "/scratch/logs"}
    assert doc["properties"]["rdma_dev_addr_list"] == ["10.0.0.5"] and doc["profile"]["cufile_stats"] == 3


@pytest.mark.parametrize(("section", "message"), [
    ({"max_direct_io_size_kb": 1000001}, "positive multiple of 4"),
    ({"max_device_cache_size_kb": 0}, "positive multiple of 4"),
    ({"log_level": "LOUD"}, "log_level"),
    ({"cufile_stats": 4}, "cufile_stats"),
    ({"rdma_dev_addr_list": ["ib0"]}, "not an IPv4 address"),
    ({"max_io_threads": 0}, "max_io_threads"),
    ({"use_compat_mode": True}, "cufile: unknown key(s) use_compat_mode"),
])
def test_cufile_validation(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^site: ") as info:
        cufile_config(section, "site")
    assert message in str(info.value)


def fake_node(root: Path, *, nvidia_fs: bool, stats: bool = False, udev: bool = True) -> dict[str, Any]:
    proc, sys_dir, udev_dir = root / "proc", root / "sys", root / "run" / "udev"
    (proc / "driver" / "nvidia-fs").mkdir(parents=True)
    modules = "nvidia_uvm 1925120 0 - Live 0x0\n" + ("nvidia_fs 262144 0 - Live 0x0\n" if nvidia_fs else "")
    (proc / "modules").write_text(modules + "nvidia 11378688 2 nvidia_uvm, Live 0x0\n")
    if stats:
        (proc / "driver" / "nvidia-fs" / "stats").write_text("GDS Version: 1.11.1.6\n")
    sys_dir.mkdir()
    udev_dir.mkdir(parents=True)
    return {"proc_root": proc, "sys_root": sys_dir, "run_udev": udev_dir,
            "access": lambda path, mode: udev}  # root reads everything: inject the answer for /run/udev


def test_probe_on_fake_trees(tmp_path: Path) -> None:
    gds = probe_gds(**fake_node(tmp_path / "a", nvidia_fs=True, stats=True), find_libcufile=lambda: "libcufile.so.0")
    assert gds.nvidia_fs_loaded and gds.nvfs_stats_present and gds.udev_readable and gds.likely_mode == "gds"
    compat = probe_gds(**fake_node(tmp_path / "b", nvidia_fs=False), find_libcufile=lambda: "libcufile.so.0")
    assert not compat.nvidia_fs_loaded and compat.likely_mode == "compat"
    no_udev = probe_gds(**fake_node(tmp_path / "c", nvidia_fs=True, udev=False), find_libcufile=lambda: "x")
    assert no_udev.likely_mode == "compat" and "/run/udev not readable" in no_udev.summary()
    nothing = probe_gds(**fake_node(tmp_path / "d", nvidia_fs=False), find_libcufile=lambda: None)
    assert nothing.likely_mode == "unavailable"
    via_sys = fake_node(tmp_path / "e", nvidia_fs=False)
    (via_sys["sys_root"] / "module" / "nvidia_fs").mkdir(parents=True)
    assert probe_gds(**via_sys, find_libcufile=lambda: "x").nvidia_fs_loaded
    empty = probe_gds(tmp_path / "none", tmp_path / "none", tmp_path / "none", find_libcufile=lambda: None)
    assert not empty.nvidia_fs_loaded and not empty.udev_readable  # missing trees are answers, not errors


def test_gdscheck_output_of_an_mltf_node() -> None:
    found = parse_gdscheck((DATA / "gdscheck_mltf_gpu0206.txt").read_text())
    assert (found["gds_version"], found["nvidia_fs_version"], found["libcufile_version"]) == ("1.11.1.6", "2.25",
                                                                                              "2.12")
    assert found["NVMe"] == "Supported" and found["NFS"] == "Unsupported"
    assert found["properties.use_compat_mode"] == "true" and found["properties.max_direct_io_size_kb"] == "16384"
    assert found["fs.lustre.posix_gds_min_kb"] == "0"  # the 'key: value' lines too
    assert found["Mellanox PeerDirect"] == "Enabled" and found["rdma devices"] == "Not configured"
    assert [g["bar1_mib"] for g in found["gpus"]] == [256] * 4 and all(g["supports_gds"] for g in found["gpus"])
    assert found["IOMMU"] == "Pass-through or enabled"
    assert any("iommu=on/pt" in w for w in found["warnings"])


def test_gds_profile_section() -> None:
    settings = gds_settings({"enabled": True, "scratch": "/mnt/nvme0/$USER", "backend": "posix",
                             "cufile": {"allow_compat_mode": False}})
    lines = settings.prologue()
    assert lines[0] == 'mkdir -p "/mnt/nvme0/$USER/mltf-gds-${SLURM_JOB_ID:-$$}"'
    assert '"allow_compat_mode": false' in lines[1] and lines[1].endswith('/cufile.json"')
    assert 'export CUFILE_ENV_PATH_JSON="/mnt/nvme0/$USER/mltf-gds-${SLURM_JOB_ID:-$$}/cufile.json"' in lines
    assert 'export MLTF_GDS_SCRATCH="/mnt/nvme0/$USER/mltf-gds-${SLURM_JOB_ID:-$$}"' in lines
    assert "MLTF_GDS_SCRATCH" not in gds_settings({"enabled": True}).job_env("/tmp/x")
    for bad, message in (({"enable": True}, "unknown key"), ({"enabled": "yes"}, "true or false"),
                         ({"scratch": "nvme"}, "absolute path"), ({"backend": "dma"}, "backend 'dma'"),
                         ({"cufile": {"log_level": "x"}}, "log_level")):
        with pytest.raises(ConfigError, match=message):
            gds_settings(bad, "p")


@pytest.mark.parametrize(("size", "offset", "nbytes"), [(0, 0, None), (1, 0, None), (4095, 7, 100),
                                                         (3 * 4096 + 17, 4096, 4097), (9_000_001, 123, None)])
def test_posix_reads_are_byte_exact(tmp_path: Path, size: int, offset: int, nbytes: int | None) -> None:
    path = tmp_path / "blob"
    data = os.urandom(size)
    path.write_bytes(data)
    for threads in (1, 3):
        tensor, info = read_tensor(path, offset=offset, nbytes=nbytes, nthreads=threads)
        want = data[offset:] if nbytes is None else data[offset:offset + nbytes]
        assert hashlib.sha256(tensor.numpy().tobytes()).hexdigest() == hashlib.sha256(want).hexdigest()
        assert (info.backend, info.nbytes, str(tensor.dtype), tensor.device.type) == ("posix", len(want),
                                                                                      "torch.uint8", "cpu")


def test_auto_is_posix_without_a_gpu_and_named_gds_backends_say_why(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 8192)
    assert read_tensor(path)[1].backend == "posix"
    import importlib.util

    if importlib.util.find_spec("kvikio") is None:  # CI: the named backend's own package is what is missing
        with pytest.raises(BackendUnavailable, match=r"kvikio is not installed \(pip install kvikio-cu13\)"):
            read_tensor(path, backend="kvikio")
    with pytest.raises(BackendUnavailable, match="not a CUDA device"):
        read_tensor(path, backend="torch_gds")
    with pytest.raises(ConfigError, match="read backend 'dma'"):
        read_tensor(path, backend="dma")
    with pytest.raises(ConfigError, match="run past the end"):
        read_tensor(path, offset=4096, nbytes=8192)


def test_a_cuda_read_where_torch_sees_no_gpu_says_so(tmp_path: Path) -> None:
    # A process that sees no GPU (CUDA_VISIBLE_DEVICES empty), on any machine, with or without a GPU.
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 8192)
    code = ("import sys\nfrom mltf_flow.fabric.gds import BackendUnavailable, read_tensor\n"
            "try:\n    read_tensor(sys.argv[1], device='cuda')\nexcept BackendUnavailable as exc:\n    print(exc)\n"
            "else:\n    print('no error')\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 0, out.stderr
    assert "device 'cuda' was asked for, but torch sees no CUDA GPU here" in out.stdout, out.stdout + out.stderr


def test_alignment_helpers() -> None:
    assert (align_up(0), align_up(1), align_up(4096), align_up(4097)) == (0, 4096, 4096, 8192)
    assert (align_down(4095), align_down(8193)) == (0, 8192)


def test_doctor_reports_the_gds_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from mltf_flow.cli import main

    node = fake_node(tmp_path / "node", nvidia_fs=True, stats=True)
    monkeypatch.setenv("MLTF_PROC_ROOT", str(node["proc_root"]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLTF_FLOW_SET__LOCAL__GDS", '{"enabled": true, "backend": "posix"}')
    assert main(["doctor", "--profile", "local"]) == 0
    out = capsys.readouterr().out
    assert "ok    GPUDirect Storage: enabled, backend posix, scratch none, allow_compat_mode True" in out
    assert "nvidia_fs loaded" in out
