"""GPUDirect Storage: cuFile configuration, a probe of the node, and reading file bytes onto a device.

* :func:`write_cufile_json`: the job's ``cufile.json`` from a :class:`CufileConfig` (the profile's
  ``gds.cufile`` section, typed and checked in :mod:`mltf_flow.config.gds`, re-exported here with
  :class:`GdsSettings` and :func:`cufile_env`), written atomically.
* :func:`probe_gds`: what this node offers (``nvidia_fs`` module, ``/run/udev`` readable for KvikIO,
  libcufile loadable, ``gdscheck``), from ``/proc`` and ``/sys`` reads only; :func:`parse_gdscheck` reads
  ``gdscheck -p`` output.
* :func:`read_tensor`: bytes of a file as a 1-D ``uint8`` tensor on a device, through ``kvikio`` (cuFile,
  GDS or its compat mode), ``torch_gds`` (``torch.cuda.gds``) or ``posix`` (parallel ``pread`` into pinned
  host memory, then one copy to the device). ``auto`` takes the first that can run and says which ran.

Nothing here imports torch, kvikio, cupy or CUDA at module import: on a CPU-only machine ``auto`` is
``posix`` and works.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.config.gds import BACKENDS as BACKENDS
from mltf_flow.config.gds import CufileConfig as CufileConfig
from mltf_flow.config.gds import GdsSettings as GdsSettings
from mltf_flow.config.gds import cufile_config as cufile_config
from mltf_flow.config.gds import cufile_env as cufile_env
from mltf_flow.config.gds import gds_settings as gds_settings
from mltf_flow.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    import torch

ALIGNMENT = 4096
_TASK_SIZE = 8 << 20  # posix: bytes per pread task


def align_down(x: int, a: int = ALIGNMENT) -> int:
    return x - x % a


def align_up(x: int, a: int = ALIGNMENT) -> int:
    return -(-x // a) * a


# -- cufile.json (its settings are the profile's gds.cufile section: mltf_flow.config.gds) --------------------
def write_cufile_json(path: str | os.PathLike[str], config: CufileConfig) -> Path:
    """Write ``cufile.json`` atomically (sorted keys, UTF-8); returns its path."""
    from mltf_flow.atomic import write_atomic

    return write_atomic(path, json.dumps(config.as_json(), indent=1, sort_keys=True) + "\n")


# -- probing the node -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GdsStatus:
    nvidia_fs_loaded: bool
    nvfs_stats_present: bool
    udev_readable: bool
    libcufile: str | None
    gdscheck_path: str | None
    config_path: str | None

    @property
    def likely_mode(self) -> str:
        """"gds" (direct path possible), "compat" (cuFile falls back to POSIX reads) or "unavailable"."""
        if self.libcufile is None:
            return "unavailable"
        return "gds" if self.nvidia_fs_loaded and self.udev_readable else "compat"

    def summary(self) -> str:
        return (f"likely mode {self.likely_mode}: nvidia_fs {'loaded' if self.nvidia_fs_loaded else 'not loaded'}, "
                f"/run/udev {'readable' if self.udev_readable else 'not readable'}, libcufile "
                f"{self.libcufile or 'not found'}, gdscheck {self.gdscheck_path or 'not found'}, cufile.json "
                f"{self.config_path or 'none (library defaults)'}")


def _find_libcufile() -> str | None:
    """A libcufile the dynamic loader (or the nvidia-cufile wheel) provides; not loaded into this process."""
    found = ctypes.util.find_library("cufile")
    if found:
        return found
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for candidate in sorted(Path(root).glob("cu*/lib/libcufile.so*")):
            return str(candidate)
    return None


def probe_gds(
    proc_root: str | os.PathLike[str] = "/proc", sys_root: str | os.PathLike[str] = "/sys",
    run_udev: str | os.PathLike[str] = "/run/udev", *, access: Callable[[str, int], bool] = os.access,
    find_libcufile: Callable[[], str | None] = _find_libcufile,
) -> GdsStatus:
    """What this node offers for GDS, from filesystem reads (``access`` and ``find_libcufile`` injectable)."""
    proc, sys_dir = Path(proc_root), Path(sys_root)
    try:
        modules = (proc / "modules").read_text()
    except OSError:
        modules = ""
    loaded = bool(re.search(r"^nvidia_fs\s", modules, re.MULTILINE)) or (sys_dir / "module" / "nvidia_fs").is_dir()
    gdscheck = shutil.which("gdscheck") or shutil.which("gdscheck.py")
    if gdscheck is None:
        found = sorted(Path("/usr/local").glob("cuda*/gds/tools/gdscheck*"))
        gdscheck = str(found[-1]) if found else None
    config = os.environ.get("CUFILE_ENV_PATH_JSON") or ("/etc/cufile.json" if Path("/etc/cufile.json").is_file()
                                                        else None)
    return GdsStatus(
        nvidia_fs_loaded=loaded,
        nvfs_stats_present=(proc / "driver" / "nvidia-fs" / "stats").is_file(),
        udev_readable=Path(run_udev).is_dir() and access(str(run_udev), os.R_OK | os.X_OK),
        libcufile=find_libcufile(),
        gdscheck_path=gdscheck,
        config_path=config,
    )


_GPU_LINE = re.compile(
    r"GPU index (\d+) (.+?) bar:\d+ bar size \(MiB\):(\d+) (supports GDS|.*?)(?:, IOMMU State: (.*))?$"
)


def parse_gdscheck(text: str) -> dict[str, Any]:
    """``gdscheck -p`` output as data: versions, driver support per storage type, the effective cuFile
    settings (``properties.*``, ``execution.*``, ...), per-GPU BAR1 size and GDS support, IOMMU state and
    warnings. Unknown lines are kept under their ``key : value`` form."""
    out: dict[str, Any] = {"gpus": [], "warnings": []}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("==="):
            continue
        versions = re.findall(r"(GDS release|nvidia_fs|libcufile) version:\s*([\w.]+)", line)
        if versions:
            for name, value in versions:
                out[f"{name.replace(' release', '').lower()}_version"] = value
            continue
        gpu = _GPU_LINE.match(line)
        if gpu:
            out["gpus"].append({"index": int(gpu.group(1)), "name": gpu.group(2), "bar1_mib": int(gpu.group(3)),
                                "supports_gds": gpu.group(4) == "supports GDS", "iommu": gpu.group(5)})
            continue
        if line.startswith("WARN:"):
            out["warnings"].append(line[len("WARN:"):].strip())
            continue
        key, sep, value = line.partition(" : ") if " : " in line else line.partition(": ")
        if sep and key:
            key = " ".join(key.lstrip("-").split())
            out.setdefault(key, value.strip())
    return out


# -- reading ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReadInfo:
    """Which backend read how many bytes in how long; ``compat`` True when cuFile/KvikIO used POSIX reads."""

    backend: str
    nbytes: int
    seconds: float
    compat: bool | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")


_NODE: list[GdsStatus] = []


def _node_gds() -> GdsStatus:
    """This node's GDS status, probed once per process."""
    if not _NODE:
        _NODE.append(probe_gds())
    return _NODE[0]


def _kvikio_available() -> str | None:
    """None when kvikio can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("kvikio") is None:
        return "kvikio is not installed (pip install kvikio-cu13)"
    return None


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def _range(path: Path, offset: int, nbytes: int | None) -> int:
    size = path.stat().st_size
    if offset < 0 or offset > size:
        raise ConfigError(f"{path}: offset {offset} is outside the file ({size} bytes).")
    n = size - offset if nbytes is None else nbytes
    if n < 0 or offset + n > size:
        raise ConfigError(f"{path}: {n} bytes at offset {offset} run past the end of the file ({size} bytes).")
    return n


def _read_kvikio(path: Path, offset: int, n: int, device: str, nthreads: int | None) -> tuple[torch.Tensor, bool]:
    import kvikio
    import kvikio.defaults
    import torch

    out = torch.empty(n, dtype=torch.uint8, device=device)
    settings = kvikio.defaults.set({"num_threads": nthreads}) if nthreads else contextlib.nullcontext()
    with settings, kvikio.CuFile(str(path), "r") as handle:
        got = handle.pread(out, n, offset).get() if n else 0
    if got != n:
        raise OSError(f"kvikio read {got} of {n} bytes from {path}")
    return out, bool(kvikio.defaults.get("compat_mode"))


def _read_torch_gds(path: Path, offset: int, n: int, device: str) -> torch.Tensor:
    import torch

    if offset % ALIGNMENT or n % ALIGNMENT:
        raise BackendUnavailable(f"torch_gds reads {ALIGNMENT}-byte aligned ranges only (offset {offset}, {n} bytes).")
    out = torch.empty(n, dtype=torch.uint8, device=device)
    handle = torch.cuda.gds.GdsFile(str(path), os.O_RDONLY)
    try:
        if n:
            handle.load_storage(out.untyped_storage(), offset)  # type: ignore[arg-type]  # what the docs show
    finally:
        del handle  # deregisters the cuFile handle
    return out


def _pread_into(fd: int, view: memoryview, file_offset: int, pool: ThreadPoolExecutor | None) -> None:
    """Fill ``view`` from ``fd`` at ``file_offset`` with parallel ``pread`` calls of ``_TASK_SIZE`` bytes."""
    n = len(view)

    def chunk(start: int) -> None:
        end = min(start + _TASK_SIZE, n)
        done = start
        while done < end:  # pread may return less than asked
            got = os.preadv(fd, [view[done:end]], file_offset + done)
            if got <= 0:
                raise OSError(f"unexpected end of file at {file_offset + done}")
            done += got

    starts = range(0, n, _TASK_SIZE)
    if pool is None or len(starts) <= 1:
        for start in starts:
            chunk(start)
    else:
        list(pool.map(chunk, starts))


def _read_posix(path: Path, offset: int, n: int, device: str, nthreads: int | None) -> torch.Tensor:
    """POSIX reads: straight into the result on CPU; on a GPU through two pinned 64 MiB bounce buffers, the
    copy of one to the device overlapping the reads into the other (no pinning of the whole range)."""
    import torch

    workers = max(1, nthreads or min(8, os.cpu_count() or 1))
    fd = os.open(path, os.O_RDONLY)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="mltf-pread") if workers > 1 else None
    try:
        if not _cuda(device):
            out = torch.empty(n, dtype=torch.uint8)
            if n:
                _pread_into(fd, memoryview(out.numpy()).cast("B"), offset, pool)  # type: ignore[arg-type]
            return out
        out = torch.empty(n, dtype=torch.uint8, device=device)
        chunk = min(n, 64 << 20) or 1
        buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(2 if n > chunk else 1)]
        done_with: list[Any] = [None] * len(buffers)
        stream = torch.cuda.Stream(device=out.device)
        for i, start in enumerate(range(0, n, chunk)):
            slot = i % len(buffers)
            if done_with[slot] is not None:
                done_with[slot].synchronize()  # its previous copy to the device has finished
            size = min(chunk, n - start)
            view = memoryview(buffers[slot].numpy()).cast("B")[:size]  # type: ignore[arg-type]
            _pread_into(fd, view, offset + start, pool)
            with torch.cuda.stream(stream):
                out[start:start + size].copy_(buffers[slot][:size], non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
                done_with[slot] = event
        stream.synchronize()
        return out
    finally:
        if pool is not None:
            pool.shutdown()
        os.close(fd)


def read_tensor(
    path: str | os.PathLike[str], *, device: str = "cpu", backend: str = "auto", offset: int = 0,
    nbytes: int | None = None, nthreads: int | None = None,
) -> tuple[torch.Tensor, ReadInfo]:
    """``nbytes`` bytes of ``path`` from ``offset`` (default: to the end) as a 1-D uint8 tensor on ``device``.

    ``backend``: ``kvikio``, ``torch_gds``, ``posix`` or ``auto`` (kvikio, then torch_gds for aligned
    ranges, on CUDA devices; posix otherwise). A backend named explicitly that cannot run raises
    :class:`BackendUnavailable`; ``auto`` falls through and records why in ``ReadInfo.notes``."""
    if backend not in BACKENDS:
        raise ConfigError(f"read backend {backend!r}: expected one of {', '.join(BACKENDS)}.")
    import torch  # before the clock starts: its import is not part of a read

    source = Path(path)
    n = _range(source, offset, nbytes)
    if _cuda(device) and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r} was asked for, but torch sees no CUDA GPU here (CPU-only "
                                 "build or no driver): read onto device='cpu'.")
    notes: list[str] = []
    candidates = [backend]
    if backend == "auto":
        # cuFile without nvidia-fs (compat mode) only adds a copy: on an H200 node without nvidia-fs KvikIO's
        # compat reads ran at 6 GB/s warm where pread + pinned bounce buffers ran at 13 GB/s (equal cold).
        # So the GDS backends are tried only where the direct path is possible.
        direct = _cuda(device) and _node_gds().likely_mode == "gds"
        candidates = ["kvikio", "torch_gds", "posix"] if direct else ["posix"]
        if _cuda(device) and not direct:
            notes.append(f"no GDS direct path here ({_node_gds().summary()}): POSIX reads with pinned bounce buffers")
    for name in candidates:
        start = time.perf_counter()
        try:
            if name == "posix":
                tensor = _read_posix(source, offset, n, device, nthreads)
                return tensor, ReadInfo("posix", n, time.perf_counter() - start, None, tuple(notes))
            if name == "kvikio" and (why := _kvikio_available()):
                raise BackendUnavailable(why)
            if not _cuda(device):
                raise BackendUnavailable(f"{name} reads into GPU memory: device {device!r} is not a CUDA device.")
            if not torch.cuda.is_available():
                raise BackendUnavailable(f"{name} needs a CUDA GPU; torch sees none here.")
            if name == "kvikio":
                tensor, compat = _read_kvikio(source, offset, n, device, nthreads)
                return tensor, ReadInfo("kvikio", n, time.perf_counter() - start, compat, tuple(notes))
            if not hasattr(torch.cuda, "gds"):
                raise BackendUnavailable("torch.cuda.gds is not in this torch build (it needs torch >= 2.7 with CUDA).")
            tensor = _read_torch_gds(source, offset, n, device)
            seconds = time.perf_counter() - start
            return tensor, ReadInfo("torch_gds", n, seconds, _node_gds().likely_mode != "gds", tuple(notes))
        except BackendUnavailable as exc:
            if backend != "auto":
                raise
            notes.append(f"{name}: {exc}")
        except (RuntimeError, OSError) as exc:
            if backend != "auto":
                raise BackendUnavailable(f"{name} failed on {source}: {type(exc).__name__}: {exc}") from exc
            notes.append(f"{name}: {type(exc).__name__}: {exc}")
    raise AssertionError("posix is always a candidate")  # pragma: no cover
