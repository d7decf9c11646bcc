"""A profile's ``gds:`` section (GPUDirect Storage for the jobs) and its ``cufile:`` settings, typed.

What the section makes a job do is here too: a ``cufile.json`` per job (:meth:`CufileConfig.as_json`,
``allow_compat_mode`` always written: NVIDIA's configuration guide and API reference disagree on its
default) and the job-script lines that write and export it (:meth:`GdsSettings.prologue`). Reading
files onto a GPU and probing a node are in :mod:`mltf_flow.fabric.gds`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from mltf_flow.config.fields import Before, Ge, StrictBool, StrictInt, StrictStr
from mltf_flow.config.schema import Schema, validate

BACKENDS = ("auto", "kvikio", "torch_gds", "posix")
_KB = "a positive multiple of 4 (KiB)"


def _kib(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 4:
        raise ValueError(f"expected {_KB}, found {value!r}.")
    return value


KiB = Annotated[int, Before(_kib)]


def _ipv4(value: Any) -> Any:
    for address in value if isinstance(value, list | tuple) else ():
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IPv4 address (of an RDMA interface; local NVMe needs "
                             "none).") from None
    return value


@dataclass(frozen=True, kw_only=True)
class CufileConfig(Schema):
    """The cuFile settings mltf_flow writes (names as in NVIDIA's GDS configuration guide)."""

    section: ClassVar[str] = "cufile"
    shape: ClassVar[str] = "allow_compat_mode: true, max_direct_io_size_kb: 16384, ..."
    expect: ClassVar[dict[str, str]] = {"cufile_stats": "0, 1, 2 or 3", "max_io_threads": "a whole number >= 1",
                                        "rdma_dev_addr_list": "a list of IPv4 addresses"}

    allow_compat_mode: StrictBool = True
    use_poll_mode: StrictBool = False
    poll_mode_max_size_kb: KiB = 4
    max_direct_io_size_kb: KiB = 16384
    max_device_cache_size_kb: KiB = 131072
    max_device_pinned_mem_size_kb: KiB = 33554432
    posix_unaligned_writes: StrictBool = False
    rdma_dev_addr_list: Annotated[tuple[StrictStr, ...], Before(_ipv4)] = ()
    log_dir: StrictStr | None = None
    log_level: Literal["ERROR", "WARN", "NOTICE", "INFO", "DEBUG", "TRACE"] = "ERROR"
    cufile_stats: Literal[0, 1, 2, 3] = 0
    max_io_threads: Annotated[StrictInt, Ge(1)] = 4
    parallel_io: StrictBool = True

    def as_json(self) -> dict[str, Any]:
        """The nested cufile.json document."""
        doc: dict[str, Any] = {
            "logging": {"level": self.log_level},
            "profile": {"cufile_stats": self.cufile_stats},
            "execution": {"max_io_threads": self.max_io_threads, "parallel_io": self.parallel_io},
            "properties": {
                # Always explicit: the documented defaults contradict each other.
                "allow_compat_mode": self.allow_compat_mode,
                "use_poll_mode": self.use_poll_mode,
                "poll_mode_max_size_kb": self.poll_mode_max_size_kb,
                "max_direct_io_size_kb": self.max_direct_io_size_kb,
                "max_device_cache_size_kb": self.max_device_cache_size_kb,
                "max_device_pinned_mem_size_kb": self.max_device_pinned_mem_size_kb,
                "rdma_dev_addr_list": list(self.rdma_dev_addr_list),
            },
            "fs": {"generic": {"posix_unaligned_writes": self.posix_unaligned_writes}},
        }
        if self.log_dir:
            doc["logging"]["dir"] = self.log_dir
        return doc


def _scratch(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not value.startswith(("/", "$"))):
        raise ValueError(f"expected an absolute path on the node (e.g. /mnt/nvme0/$USER), found {value!r}.")
    return value


def _empty_if_none(value: Any) -> Any:
    return {} if value is None else value


def cufile_env(path: str) -> dict[str, str]:
    """Where cuFile (and KvikIO) find their configuration: set before the process first uses cuFile."""
    return {"CUFILE_ENV_PATH_JSON": str(path)}


@dataclass(frozen=True, kw_only=True)
class GdsSettings(Schema):
    """The ``gds:`` section: whether jobs get a cufile.json, where node-local scratch is, and the read
    backend training scripts should ask for."""

    section: ClassVar[str] = "gds"
    shape: ClassVar[str] = "enabled: true, scratch: ..., cufile: {...}"
    expect: ClassVar[dict[str, str]] = {"backend": f"one of {', '.join(BACKENDS)}"}

    enabled: StrictBool = False
    scratch: Annotated[str | None, Before(_scratch)] = None
    backend: Literal["auto", "kvikio", "torch_gds", "posix"] = "auto"
    cufile: Annotated[CufileConfig, Before(_empty_if_none)] = field(default_factory=CufileConfig)

    def job_env(self, config_dir: str) -> dict[str, str]:
        """What every process of a job gets (cufile.json in ``config_dir``)."""
        env = {**cufile_env(f"{config_dir}/cufile.json"), "MLTF_GDS_BACKEND": self.backend}
        if self.scratch:
            env["MLTF_GDS_SCRATCH"] = config_dir
        return env

    def prologue(self) -> list[str]:
        """Job-script lines: a per-job directory (on the scratch disk when set), its cufile.json, the exports."""
        import shlex

        base = self.scratch or "${TMPDIR:-/tmp}"
        config_dir = f"{base}/mltf-gds-${{SLURM_JOB_ID:-$$}}"
        text = json.dumps(self.cufile.as_json(), sort_keys=True)
        lines = [f'mkdir -p "{config_dir}"', f'printf "%s\\n" {shlex.quote(text)} > "{config_dir}/cufile.json"']
        lines += [f'export {key}="{value}"' for key, value in self.job_env(config_dir).items()]
        return lines


def cufile_config(section: CufileConfig | Mapping[str, Any] | None, where: str = "cufile") -> CufileConfig:
    """A profile's ``gds.cufile`` mapping as a CufileConfig (unknown keys and bad values are errors)."""
    if isinstance(section, CufileConfig):
        return section
    return CufileConfig() if not section else validate(CufileConfig, section, where)


def gds_settings(section: GdsSettings | Mapping[str, Any] | None, where: str = "gds") -> GdsSettings:
    """A profile's ``gds`` section as settings (a mapping is checked; ``where`` names it in errors)."""
    if isinstance(section, GdsSettings):
        return section
    return GdsSettings() if section is None else validate(GdsSettings, section, where)
