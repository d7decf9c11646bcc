"""Cluster profiles as types: :class:`LocalProfile` (a Dask LocalCluster here) and :class:`SlurmProfile`
(dask-jobqueue workers as SLURM jobs), told apart by their ``kind`` (the discriminator of
:data:`AnyProfile`). Every key is explained in ``mltf_flow/profiles.yaml``; files, layering and
``extends`` are :mod:`mltf_flow.clusters.profiles`.

A local profile accepts the keys of SLURM profiles and ignores them, so ``kind: local`` can extend a
SLURM profile; checks across keys (lifetime below walltime, cores per worker) belong to the SLURM type.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Any, ClassVar, Literal

from mltf_flow.config.fabric import FabricSettings
from mltf_flow.config.fields import Before, Ge, Gt, StrictFloat, StrictInt, StrictStr
from mltf_flow.config.gds import GdsSettings
from mltf_flow.config.rucio import RucioSettings
from mltf_flow.config.schema import Schema
from mltf_flow.config.units import DURATION_HINT, SIZE_HINT, TIMEOUT_HINT, Duration, Size, Timeout, Walltime

_WHOLE = "a whole number >= 1"


def _strings(value: Any) -> Any:
    return () if value is None else value


Lines = Annotated[tuple[StrictStr, ...], Before(_strings)]
Whole = Annotated[StrictInt, Ge(1)]


@dataclass(frozen=True, kw_only=True)
class Profile(Schema):
    """What every profile has (see ``profiles.yaml`` for meanings); a profile is one of its subclasses."""

    expect: ClassVar[dict[str, str]] = {
        "kind": "'local' or 'slurm'", "workers": _WHOLE, "threads_per_worker": _WHOLE, "cores": _WHOLE,
        "death_timeout": _WHOLE, "processes": f"{_WHOLE}, or null", "gpus_per_node": "a whole number >= 0",
        "worker_start_timeout": "a number of seconds > 0", "memory": SIZE_HINT, "lifetime": DURATION_HINT,
        "lifetime_stagger": DURATION_HINT, "timeout": f"{TIMEOUT_HINT}, or null",
        "gpu_directive": "'gres' or 'gpus-per-node'", "pre_timeout_signal": "a whole number of seconds >= 0, or null",
        "max_restarts": "a whole number >= 0",
        "prologue": "a list of strings", "extra_directives": "a list of strings",
        **dict.fromkeys(("dashboard_address", "scheduler_address", "gpu_profile", "interface", "local_directory",
                         "partition", "account", "qos", "log_directory", "python", "job_name"), "a string or null"),
    }

    name: str
    kind: str = "local"
    workers: Whole = 2
    threads_per_worker: Whole = 1
    memory: Size = "2GB"
    dashboard_address: StrictStr | None = "127.0.0.1:8787"
    scheduler_address: StrictStr | None = None
    gpu_profile: StrictStr | None = None
    worker_start_timeout: Annotated[StrictFloat, Gt(0)] = 120.0
    gpus_per_node: Annotated[StrictInt, Ge(0)] = 0
    processes: Whole | None = None
    interface: StrictStr | None = None
    local_directory: StrictStr | None = None
    #: The network for multi-node training (NCCL/gloo); see mltf_flow.fabric.spec.
    fabric: FabricSettings | None = None
    #: How rucio:// datasets are staged for this facility; see mltf_flow.staging.rucio.
    rucio: RucioSettings | None = None
    #: GPUDirect Storage for the jobs (cufile.json, node-local scratch); see mltf_flow.fabric.gds.
    gds: GdsSettings | None = None
    #: Seconds a step's command may run on this profile before it is stopped and the step fails; None: no
    #: limit. A step's own ``timeout`` wins (mltf_flow.step_def.step_timeout).
    timeout: Timeout | None = None
    #: Where each key's value came from (file or variable), for error messages and `doctor`.
    sources: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def worker_processes(self) -> int:
        """Dask worker processes per job: one per GPU, else ``processes`` or 1."""
        if self.processes is not None:
            return self.processes
        return self.gpus_per_node or 1

    @property
    def expected_workers(self) -> int:
        """Workers the cluster should reach."""
        return self.workers

    @property
    def size(self) -> str:
        """The cluster's size in words, for listings."""
        return f"{self.workers} x {self.threads_per_worker} cores"

    def source_of(self, key: str) -> str:
        return self.sources.get(key, "defaults")

    @property
    def origin(self) -> str:
        """The file (or variable) that defines this profile."""
        return self.sources.get("(defined in)", "?")


@dataclass(frozen=True, kw_only=True)
class LocalProfile(Profile):
    """A Dask LocalCluster on this machine: ``workers`` worker processes."""

    kind: Literal["local"] = "local"


@dataclass(frozen=True, kw_only=True)
class SlurmProfile(Profile):
    """dask-jobqueue workers as SLURM jobs: ``workers`` jobs of ``worker_processes`` workers each."""

    kind: Literal["slurm"] = "slurm"
    partition: StrictStr | None = None
    account: StrictStr | None = None
    qos: StrictStr | None = None
    walltime: Walltime = "01:00:00"
    cores: Whole = 1
    gpu_directive: Literal["gres", "gpus-per-node"] = "gres"
    lifetime: Duration | None = None
    lifetime_stagger: Duration | None = None
    log_directory: StrictStr | None = None
    prologue: Lines = ()
    extra_directives: Lines = ()
    python: StrictStr | None = None
    job_name: StrictStr = "mltf-worker"
    death_timeout: Whole = 60
    #: Seconds before a worker job's end at which a training is asked to stop after a checkpoint (None: a tenth
    #: of the walltime, 10 s to 2 min); it continues on fresh workers at most max_restarts times.
    pre_timeout_signal: Annotated[StrictInt, Ge(0)] | None = None
    max_restarts: Annotated[StrictInt, Ge(0)] = 10

    @property
    def expected_workers(self) -> int:
        """Workers the cluster should reach: jobs x worker processes per job."""
        return self.workers * self.worker_processes

    @property
    def size(self) -> str:
        return f"{self.workers} x {self.cores} cores"


#: A profile of either kind (mltf_flow.clusters.profiles picks the type by ``kind``).
AnyProfile = LocalProfile | SlurmProfile
#: The profile types by ``kind``.
KINDS: dict[str, type[Profile]] = {"local": LocalProfile, "slurm": SlurmProfile}
#: Keys only SLURM profiles use (a local profile ignores them).
SLURM_KEYS = tuple(sorted({f.name for f in fields(SlurmProfile)} - {f.name for f in fields(Profile)}))
#: Every key a profile may set in a file.
KEYS = tuple(sorted({f.name for f in fields(SlurmProfile)} - {"name", "sources"}))
