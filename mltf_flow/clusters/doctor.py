"""``mltf-flow doctor --profile NAME``: check a profile the way a submission would, and say what is wrong.

Checks, in order: the profile resolves (extends, types); the RDMA fabric seen from this host (sysfs) and
the NCCL environment it implies; for SLURM profiles the client commands exist,
the partition exists (``sinfo``), the network interface exists here, the node python exists, the
rendered job script is accepted by ``sbatch --test-only``; for every profile whether the dashboard
address is free. Exit code 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable

from mltf_flow.clusters.profiles import Profile, SlurmProfile
from mltf_flow.config import load_settings
from mltf_flow.errors import MltfFlowError


def _check(label: str, fn: Callable[[], str], results: list[bool]) -> None:
    try:
        detail = fn()
    except MltfFlowError as exc:
        results.append(False)
        print(f"  FAIL  {label}\n        " + str(exc).replace("\n", "\n        "))
        return
    except Exception as exc:  # any failing check is a finding, not a crash of the report
        results.append(False)
        print(f"  FAIL  {label}: {type(exc).__name__}: {exc}")
        return
    results.append(True)
    print(f"  ok    {label}{': ' + detail if detail else ''}")


def run_doctor(name: str) -> int:
    from mltf_flow.clusters.profiles import get_profile

    print(f"mltf-flow doctor: profile {name!r}")
    results: list[bool] = []
    holder: dict[str, object] = {}

    def resolve() -> str:
        profile = get_profile(name)
        holder["p"] = profile
        files = sorted(set(profile.sources.values()))
        return f"{profile.kind}, from {', '.join(files)}"

    _check("profile resolves", resolve, results)
    profile = holder.get("p")
    if profile is None:
        return 1
    assert isinstance(profile, Profile)
    if isinstance(profile, SlurmProfile):
        print(f"        workers={profile.workers} cores={profile.cores} memory={profile.memory} "
              f"gpus_per_node={profile.gpus_per_node} walltime={profile.walltime} lifetime={profile.lifetime}")
    else:
        print(f"        workers={profile.workers} threads_per_worker={profile.threads_per_worker} "
              f"memory={profile.memory} gpus_per_node={profile.gpus_per_node}")

    def dashboard() -> str:
        if not profile.dashboard_address:
            return "disabled"
        host, _, port = profile.dashboard_address.rpartition(":")
        with socket.socket() as sock:
            if sock.connect_ex((host or "127.0.0.1", int(port))) == 0:
                return f"{profile.dashboard_address} is in use: Dask will pick another port (the run records it)"
        return f"{profile.dashboard_address} is free"

    _check("dashboard address", dashboard, results)

    def fabric() -> str:
        from mltf_flow.fabric.nccl import detect_roce
        from mltf_flow.fabric.spec import resolve_fabric

        root = os.environ.get("MLTF_SYSFS_ROOT", "/sys")
        ports = detect_roce(root)
        lines = [f"{p.device}:{p.port} {p.link_layer} {p.state} netdevs={','.join(p.netdevs) or '-'} "
                 f"ipv4-RoCEv2={p.ipv4_v2_gids()}" for p in ports] or ["no RDMA ports here (no class/infiniband)"]
        # What a rank on a node like this one would get from the profile's fabric section.
        resolved = resolve_fabric(profile.fabric, interface=profile.interface, sysfs_root=root)
        env = " ".join(f"{k}={v}" for k, v in resolved.env.items()) or "(none: NCCL and gloo choose)"
        return "\n        " + "\n        ".join([*lines, resolved.note, f"rank environment: {env}"])

    _check("RDMA fabric (this host)", fabric, results)

    def gds() -> str:
        from mltf_flow.fabric.gds import gds_settings, probe_gds

        settings = gds_settings(profile.gds)
        status = probe_gds(os.environ.get("MLTF_PROC_ROOT", "/proc"), os.environ.get("MLTF_SYSFS_ROOT", "/sys"))
        wanted = (f"enabled, backend {settings.backend}, scratch {settings.scratch or 'none'}, allow_compat_mode "
                  f"{settings.cufile.allow_compat_mode}") if settings.enabled else "not enabled in the profile"
        return f"{wanted}\n        this host: {status.summary()}"

    _check("GPUDirect Storage", gds, results)
    if isinstance(profile, SlurmProfile):
        _slurm_checks(profile, results)
    ok = all(results)
    print("all checks passed" if ok else f"{results.count(False)} check(s) failed")
    return 0 if ok else 1


def _slurm_checks(slurm: SlurmProfile, results: list[bool]) -> None:
    """What only a SLURM profile needs: the client commands, its partition, interface and python, and
    SLURM's own answer to its job script."""
    from mltf_flow.clusters.slurm import preflight, render_job_script

    def commands() -> str:
        missing = [c for c in ("sbatch", "squeue", "scancel", "sinfo") if shutil.which(c) is None]
        if missing:
            raise MltfFlowError(f"not on PATH: {', '.join(missing)} (load the SLURM module?)")
        return "sbatch, squeue, scancel, sinfo found"

    def partition() -> str:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a %D %c %m %G"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        names = {line.split()[0].rstrip("*"): line for line in out.splitlines() if line.strip()}
        wanted = slurm.partition or next((n for n, line in names.items() if "*" in line.split()[0]), "")
        if slurm.partition and slurm.partition not in names:
            raise MltfFlowError(f"partition {slurm.partition!r} not found; partitions: {', '.join(names)}")
        return f"{wanted}: {names.get(wanted, '?')}"

    def interface() -> str:
        if not slurm.interface:
            return "not set (Dask picks the default route's address)"
        import psutil

        if slurm.interface not in psutil.net_if_addrs():
            raise MltfFlowError(f"interface {slurm.interface!r} does not exist on this host "
                                f"({', '.join(psutil.net_if_addrs())})")
        return f"{slurm.interface} exists here"

    def python() -> str:
        path = slurm.python
        if path and not os.access(path, os.X_OK):
            raise MltfFlowError(f"python {path} is not executable here (is it on a shared filesystem?)")
        return path or "this interpreter"

    def test_only() -> str:
        script = render_job_script(slurm, load_settings().work_dir / "slurm-logs" / slurm.name)
        return preflight(slurm, script)

    for label, fn in (("SLURM commands", commands), ("partition", partition), ("network interface", interface),
                      ("python on the nodes", python), ("sbatch --test-only", test_only)):
        _check(label, fn, results)
    print(f"  see the job script: mltf-flow render --profile {slurm.name}")
