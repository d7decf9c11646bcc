"""SLURM profiles -> dask-jobqueue ``SLURMCluster``: keyword arguments, rendered job scripts, pre-flight.

:func:`slurm_cluster_kwargs` is pure (profile in, kwargs out) and is what tests pin down.
:func:`preflight` runs ``sbatch --test-only`` (:mod:`mltf_flow.slurm.preflight`) on the exact script:
dask-jobqueue only *logs* a rejected ``sbatch`` and the user then waits for a worker timeout; SLURM's own
message arrives in milliseconds.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.clusters.dashboard import scheduler_options
from mltf_flow.clusters.profiles import Profile, SlurmProfile
from mltf_flow.clusters.worker_env import job_exports
from mltf_flow.errors import ConfigError
from mltf_flow.fabric.gds import gds_settings
from mltf_flow.fabric.spec import static_env

if TYPE_CHECKING:
    from dask_jobqueue.slurm import SLURMCluster

#: Environment every worker job exports before the worker starts (read once per process).
WORKER_ENV = {
    # Ranks and DataLoader workers need to start child processes: daemonic workers cannot.
    "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
    # The nanny's pre-spawn environment without Dask's malloc trim threshold (mltf_flow.clusters.worker_env).
    **job_exports(),
}


def slurm_cluster_kwargs(profile: Profile, log_directory: Path) -> dict[str, Any]:
    """Keyword arguments for ``dask_jobqueue.SLURMCluster`` from a slurm profile."""
    if not isinstance(profile, SlurmProfile):
        raise ConfigError(f"profile {profile.name!r} is of kind {profile.kind!r}, not slurm: it has no job script. "
                          "Name a SLURM profile (mltf-flow profiles lists them).")
    directives: list[str] = []
    worker_args: list[str] = []
    if profile.gpus_per_node:
        if profile.gpu_directive == "gres":
            directives.append(f"--gres=gpu:{profile.gpus_per_node}")
        else:
            directives.append(f"--gpus-per-node={profile.gpus_per_node}")
        # One worker per GPU: a logical resource for scheduling, and a preload that pins each worker
        # process to its own device before anything initialises CUDA.
        worker_args += ["--resources", "GPU=1", "--preload", "mltf_flow.clusters.gpu_pin"]
    if profile.qos:
        directives.append(f"--qos={profile.qos}")
    directives.extend(profile.extra_directives)
    if profile.lifetime:
        worker_args += ["--lifetime", profile.lifetime]
        if profile.lifetime_stagger:
            worker_args += ["--lifetime-stagger", profile.lifetime_stagger]
    env = {**WORKER_ENV, "MLTF_WORKERS_PER_JOB": str(profile.worker_processes)}
    if profile.gpus_per_node:
        env["MLTF_GPUS_PER_JOB"] = str(profile.gpus_per_node)
        # CUDA numbers devices fastest-first by default, NVML by PCI bus: make them agree.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    # An explicit fabric is exported before the worker starts (NCCL reads it once per process);
    # `auto` is resolved per rank on the node itself (mltf_flow.ddp).
    env.update(static_env(profile.fabric, profile.interface))
    prologue = [*profile.prologue, *(f"export {k}={shlex.quote(v)}" for k, v in env.items())]
    gds = gds_settings(profile.gds)
    if gds.enabled:
        # cuFile reads its configuration once, at initialisation: it must exist before the worker starts.
        prologue += gds.prologue()
    options: dict[str, Any] = scheduler_options(profile.dashboard_address)
    kwargs: dict[str, Any] = {
        "cores": profile.cores,
        "processes": profile.worker_processes,
        "memory": profile.memory,
        "queue": profile.partition,
        "account": profile.account,
        "walltime": profile.walltime,
        "job_name": profile.job_name,
        "interface": profile.interface,
        "death_timeout": profile.death_timeout,
        "local_directory": os.path.expandvars(profile.local_directory) if profile.local_directory else None,
        "log_directory": str(Path(profile.log_directory or log_directory).expanduser()),
        "python": profile.python or sys.executable,
        "job_extra_directives": directives,
        "job_script_prologue": prologue,
        "worker_extra_args": worker_args,
        "scheduler_options": options,
    }
    return kwargs


def make_slurm_cluster(profile: Profile, log_directory: Path, **overrides: Any) -> SLURMCluster:
    """A ``SLURMCluster`` for ``profile`` (starts the Dask scheduler in this process; submits nothing). Pass
    ``security=`` (:mod:`mltf_flow.clusters.security`): the scheduler and the workers then speak TLS only."""
    from dask_jobqueue.slurm import SLURMCluster

    kwargs = slurm_cluster_kwargs(profile, log_directory)
    kwargs.update(overrides)
    Path(kwargs["log_directory"]).mkdir(parents=True, exist_ok=True)
    return SLURMCluster(**kwargs)


def render_job_script(profile: Profile, log_directory: Path) -> str:
    """The exact job script a profile submits (the scheduler address and the paths of the TLS credentials
    are this render's own: a started cluster gets new ones under the work dir)."""
    from mltf_flow.clusters.security import create

    with tempfile.TemporaryDirectory(prefix="mltf-render-") as scratch:
        credentials = create(Path(scratch))
        # The scheduler of a render only needs an address: loopback works on any host (the worker's
        # --interface from the profile is still written into the script); no dashboard, no fixed port.
        cluster = make_slurm_cluster(
            profile, log_directory, scheduler_options={**scheduler_options(None), "host": "127.0.0.1"},
            security=credentials.security(),
        )
        try:
            return str(cluster.job_script())
        finally:
            cluster.close()


def preflight(profile: SlurmProfile, script: str) -> str:
    """Ask SLURM whether it would accept ``script`` (``sbatch --test-only``); return its answer.

    Raises :class:`SlurmRejected` carrying SLURM's own message and the profile's origin.
    """
    from mltf_flow.slurm.preflight import check

    return check(
        script, lambda answer: _rejection(profile, answer),
        hint=f"profile {profile.name!r} submits to SLURM; elsewhere choose a local profile (--profile local)",
    )


def _rejection(profile: SlurmProfile, answer: str) -> str:
    """What a rejected worker job of ``profile`` asked for, around SLURM's ``answer``."""
    origins = sorted({profile.source_of(k) for k in ("partition", "account", "gpus_per_node", "memory", "cores")})
    return (
        f"SLURM rejects the worker job of profile {profile.name!r} (defined in {', '.join(origins)}):\n"
        f"    {answer}\n"
        f"  Check partition={profile.partition!r}, account={profile.account!r}, gpus_per_node="
        f"{profile.gpus_per_node}, cores={profile.cores}, memory={profile.memory!r} against `sinfo -o "
        f"'%P %c %m %G'`. See the script with: mltf-flow render --profile {profile.name}"
    )
