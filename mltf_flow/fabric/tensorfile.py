"""The MLTF tensor file (``.mltft``): named arrays laid out for GPUDirect Storage reads.

GPUDirect Storage (cuFile) reads whole 4 KiB blocks at 4 KiB-aligned file offsets, so every array in this
format starts at a multiple of 4096 and is padded to one; a reader asks for exactly the aligned range and
slices the tensor afterwards (no unaligned handling in the GDS path). Layout, all integers little-endian::

    byte 0 .. 7        magic  b"MLTFTNS1"
    byte 8 .. 15       L, an unsigned 64-bit integer: the length in bytes of the index
    byte 16 .. 16+L-1  the index: UTF-8 JSON (below)
    ...                zero bytes up to H = align_up(16 + L, 4096), the end of the header
    byte H ..          the arrays, in the order they were written: array i's raw bytes (C order,
                       little-endian) start at its "offset" (a multiple of 4096, >= H) and are followed by
                       zero bytes up to the next multiple of 4096, where the next array starts

An array of 0 bytes takes no space (its offset is where the next array starts). The file size is a
multiple of 4096: H plus each array's ``align_up(nbytes, 4096)``. The index::

    {"version": 1, "alignment": 4096,
     "arrays": {NAME: {"dtype": "<f4", "shape": [3, 5], "offset": 4096, "nbytes": 60, "sha256": HEX}, ...},
     "meta": {...}}

``dtype`` is numpy's dtype string (``"<f4"``, ``"<i8"``, ``"|u1"``, ``"|b1"``...); only plain numbers and
booleans are stored (b1, i1-i8, u1-u8, f2-f8, c8, c16); ``sha256`` covers the ``nbytes`` data bytes
(without padding); ``meta`` is the writer's JSON-able metadata (``{}`` when none).

Writing is atomic (temp file in the same directory, fsync, ``os.replace``). Reading goes through
:func:`mltf_flow.fabric.gds.read_tensor` (KvikIO, ``torch.cuda.gds`` or POSIX), or :func:`memmap_array`
with numpy alone. :func:`local_copy` puts one copy per node on node-local scratch (NVMe) first.

Importing this module imports neither numpy nor torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow import phases
from mltf_flow.errors import ConfigError, StagingError

if TYPE_CHECKING:
    import numpy
    import torch

    from mltf_flow.fabric.gds import ReadInfo

MAGIC = b"MLTFTNS1"
VERSION = 1
ALIGN = 4096  # the same as mltf_flow.fabric.gds.ALIGNMENT (not imported here: that module may import torch)
SUFFIX = ".mltft"
_PREFIX = struct.Struct("<8sQ")  # magic, index length
_CHUNK = 64 << 20  # bytes hashed and written at a time
_MERGE_GAP = 1 << 20  # load_arrays reads over holes up to this size rather than issuing another read
# numpy dtype string (little-endian form) -> torch dtype name
_TORCH_DTYPES = {
    "|b1": "bool", "|i1": "int8", "<i2": "int16", "<i4": "int32", "<i8": "int64",
    "|u1": "uint8", "<u2": "uint16", "<u4": "uint32", "<u8": "uint64",
    "<f2": "float16", "<f4": "float32", "<f8": "float64", "<c8": "complex64", "<c16": "complex128",
}


def _align(x: int) -> int:
    return -(-x // ALIGN) * ALIGN


def _little(dtype: numpy.dtype[Any]) -> numpy.dtype[Any]:
    return dtype.newbyteorder("<") if dtype.byteorder in ("=", ">") else dtype


# --- writing ------------------------------------------------------------------------------------------


def _array_plan(target: Path, arrays: Mapping[str, Any]) -> list[tuple[str, Any, numpy.dtype[Any], list[int], int]]:
    """(name, array, little-endian dtype, shape, bytes) per array, checked: only booleans and plain numbers."""
    import numpy as np

    plan: list[tuple[str, Any, numpy.dtype[Any], list[int], int]] = []
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tensor file {target}: array names must be non-empty strings, got {name!r}")
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise ConfigError(f"tensor file {target}: array {name!r} is not convertible to a numpy array: "
                              f"{exc}") from exc
        dtype = _little(arr.dtype)
        if dtype.str not in _TORCH_DTYPES:
            raise ConfigError(
                f"tensor file {target}: array {name!r} has dtype {arr.dtype} ({arr.dtype.str}), which cannot be "
                f"stored: only booleans and plain numbers are ({', '.join(sorted(_TORCH_DTYPES))}); "
                "convert it first (object, string, structured and datetime arrays are not supported)")
        plan.append((name, arr, dtype, [int(n) for n in arr.shape], int(arr.size) * dtype.itemsize))
    return plan


def write_tensor_file(path: str | os.PathLike[str], arrays: Mapping[str, Any],
                      meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``arrays`` (name -> numpy array) and ``meta`` to ``path`` atomically; return the index.

    Arrays are stored little-endian and C-contiguous (converted one at a time while writing, so a big
    array is not held twice unless it needs converting). On any error nothing is left at ``path`` (an
    existing file there is kept as it was).
    """
    target = Path(path)
    plan = _array_plan(target, arrays)
    try:
        meta_obj = dict(meta or {})
        json.dumps(meta_obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tensor file {target}: meta must be a JSON-able mapping (no NaN/inf): {exc}") from exc

    # The index holds the offsets, which depend on the index's length: grow the header until it fits.
    # sha256 is not known before the data is written; a placeholder of the same length keeps the layout.
    header = ALIGN
    while True:
        index = _build_index(plan, header, meta_obj, ["0" * 64] * len(plan))
        blob = _encode(index)
        need = _align(_PREFIX.size + len(blob))
        if need <= header:
            break
        header = need

    import numpy as np

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(header))
            digests = []
            for name, arr, dtype, _, nbytes in plan:
                entry = index["arrays"][name]
                assert f.tell() == entry["offset"]
                data = np.asarray(arr, dtype=dtype, order="C")  # a copy only when not already LE C-order
                flat = data.reshape(-1).view(np.uint8) if data.size else np.empty(0, np.uint8)
                view = flat.data  # a memoryview of bytes
                digest = hashlib.sha256()
                for start in range(0, nbytes, _CHUNK):
                    chunk = view[start:start + _CHUNK]
                    digest.update(chunk)
                    f.write(chunk)
                digests.append(digest.hexdigest())
                f.write(bytes(_align(nbytes) - nbytes))
                del data, flat, view
                phases.reached(phases.TENSORFILE_HALF_WRITTEN)
            index = _build_index(plan, header, meta_obj, digests)
            final = _encode(index)
            assert len(final) == len(blob), "index length changed after hashing"
            f.seek(0)
            f.write(_PREFIX.pack(MAGIC, len(final)) + final)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp_name, 0o666 & ~mask)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return index


def _build_index(plan: list[tuple[str, Any, numpy.dtype[Any], list[int], int]], header: int,
                 meta: dict[str, Any], digests: list[str]) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    offset = header
    for (name, _, dtype, shape, nbytes), digest in zip(plan, digests, strict=True):
        entries[name] = {"dtype": dtype.str, "shape": shape, "offset": offset, "nbytes": nbytes, "sha256": digest}
        offset += _align(nbytes)
    return {"version": VERSION, "alignment": ALIGN, "arrays": entries, "meta": meta}


def _encode(index: dict[str, Any]) -> bytes:
    return json.dumps(index, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- the index ----------------------------------------------------------------------------------------


def _read_raw_index(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """The index's JSON bytes and the file size, after checking magic and lengths."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(_PREFIX.size)
        if len(prefix) < len(MAGIC) or prefix[:len(MAGIC)] != MAGIC:
            raise ConfigError(f"{path} is not an MLTF tensor file: it starts with {prefix[:len(MAGIC)]!r}, not the "
                              f"magic {MAGIC!r} (write it with mltf_flow.fabric.tensorfile.write_tensor_file)")
        if len(prefix) < _PREFIX.size:
            raise ConfigError(f"MLTF tensor file {path} is truncated: {size} bytes, the header alone needs "
                              f"{_PREFIX.size}")
        _, length = _PREFIX.unpack(prefix)
        if length > size - _PREFIX.size:
            raise ConfigError(f"MLTF tensor file {path} is truncated: its index is {length} bytes long but the file "
                              f"has only {size} bytes")
        raw = f.read(length)
    if len(raw) != length:
        raise ConfigError(f"MLTF tensor file {path} is truncated: read {len(raw)} of its {length} index bytes")
    return raw, size


def read_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's index (version, alignment, arrays, meta), checked against the file's size."""
    raw, size = _read_raw_index(path)
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"MLTF tensor file {path} has a corrupt index (not UTF-8 JSON): {exc}") from exc
    if not isinstance(index, dict) or index.get("version") != VERSION:
        version = index.get("version") if isinstance(index, dict) else None
        raise ConfigError(f"MLTF tensor file {path} has index version {version!r}; this mltf_flow reads "
                          f"version {VERSION}")
    if index.get("alignment") != ALIGN or not isinstance(index.get("arrays"), dict):
        raise ConfigError(f"MLTF tensor file {path} has a corrupt index: alignment {index.get('alignment')!r} "
                          f"(expected {ALIGN}) or no 'arrays' mapping")
    index.setdefault("meta", {})
    header = _align(_PREFIX.size + len(raw))
    end = header
    for name, entry in index["arrays"].items():
        try:
            dtype, shape, offset, nbytes = entry["dtype"], entry["shape"], entry["offset"], entry["nbytes"]
            ok = (dtype in _TORCH_DTYPES and isinstance(shape, list) and all(
                isinstance(n, int) and n >= 0 for n in shape) and isinstance(offset, int) and isinstance(nbytes, int)
                and offset >= header and offset % ALIGN == 0
                and nbytes == math.prod(shape) * int(dtype[2:])
                and isinstance(entry["sha256"], str))
        except (TypeError, KeyError, ValueError, IndexError):
            ok = False
        if not ok:
            raise ConfigError(f"MLTF tensor file {path} has a corrupt index entry for array {name!r}: {entry!r}")
        end = max(end, offset + _align(nbytes))
    if size < end:
        raise ConfigError(f"MLTF tensor file {path} is truncated: {size} bytes, its index needs {end} "
                          "(was it copied or written only in part?)")
    return index


def _entry(index: dict[str, Any], path: str | os.PathLike[str], name: str) -> dict[str, Any]:
    try:
        entry: dict[str, Any] = index["arrays"][name]
    except KeyError:
        known = ", ".join(repr(n) for n in index["arrays"]) or "none"
        raise ConfigError(f"MLTF tensor file {path} has no array {name!r} (it has: {known})") from None
    return entry


# --- reading ------------------------------------------------------------------------------------------


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of an index ``dtype`` string (``"<f4"`` -> ``torch.float32``)."""
    import torch

    try:
        result: torch.dtype = getattr(torch, _TORCH_DTYPES[dtype])
    except KeyError:
        raise ConfigError(f"dtype {dtype!r} has no torch equivalent here (known: {sorted(_TORCH_DTYPES)})") from None
    return result


def load_array(path: str | os.PathLike[str], name: str, *, device: str = "cpu", backend: str = "auto",
               verify: bool = False, nthreads: int | None = None) -> tuple[torch.Tensor, ReadInfo]:
    """Read one array onto ``device`` (one aligned read through ``gds.read_tensor``).

    ``verify=True`` checks the array's sha256 (on a host copy) and raises :class:`StagingError` on a mismatch.
    """
    tensors, info = load_arrays(path, [name], device=device, backend=backend, verify=verify, nthreads=nthreads)
    return tensors[name], info


def load_arrays(path: str | os.PathLike[str], names: Iterable[str] | None = None, *, device: str = "cpu",
                backend: str = "auto", verify: bool = False,
                nthreads: int | None = None) -> tuple[dict[str, torch.Tensor], ReadInfo]:
    """Read the named arrays (default: all) onto ``device``; return them and the combined :class:`ReadInfo`.

    Arrays stored next to each other (the usual case: all of them, or neighbours) come from ONE read of the
    aligned byte range covering them; the tensors are views into that one buffer. Arrays separated by more
    than 1 MiB of unrequested data are read in separate runs; ``ReadInfo`` then adds up bytes and seconds.
    Empty arrays need no read: when only those are asked for, ``ReadInfo.backend`` is ``"none"``.
    """
    import torch

    from mltf_flow.fabric.gds import ReadInfo, read_tensor

    index = read_index(path)
    wanted = list(index["arrays"]) if names is None else list(dict.fromkeys(names))
    entries = {name: _entry(index, path, name) for name in wanted}

    runs: list[list[str]] = []  # names in offset order, grouped into ranges read at once
    run_end = -1
    for name in sorted((n for n in wanted if entries[n]["nbytes"]), key=lambda n: entries[n]["offset"]):
        entry = entries[name]
        if runs and entry["offset"] - run_end <= _MERGE_GAP:
            runs[-1].append(name)
        else:
            runs.append([name])
        run_end = max(run_end, entry["offset"] + _align(entry["nbytes"]))

    tensors: dict[str, torch.Tensor] = {}
    infos: list[ReadInfo] = []
    for run in runs:
        start = entries[run[0]]["offset"]
        stop = max(entries[n]["offset"] + _align(entries[n]["nbytes"]) for n in run)
        buf, info = read_tensor(path, device=device, backend=backend, offset=start, nbytes=stop - start,
                                nthreads=nthreads)
        infos.append(info)
        for name in run:
            entry = entries[name]
            at = entry["offset"] - start
            tensors[name] = buf[at:at + entry["nbytes"]].view(torch_dtype(entry["dtype"])).reshape(entry["shape"])
    for name in wanted:
        entry = entries[name]
        if not entry["nbytes"]:
            tensors[name] = torch.empty(entry["shape"], dtype=torch_dtype(entry["dtype"]), device=device)
        if verify:
            _verify(path, name, entry, tensors[name])

    if not infos:
        combined = ReadInfo(backend="none", nbytes=0, seconds=0.0, compat=None)
    else:
        backends = list(dict.fromkeys(i.backend for i in infos))
        compats = {i.compat for i in infos}
        combined = ReadInfo(backend="+".join(backends), nbytes=sum(i.nbytes for i in infos),
                            seconds=sum(i.seconds for i in infos), compat=compats.pop() if len(compats) == 1 else None,
                            notes=tuple(dict.fromkeys(note for i in infos for note in i.notes)))
    phases.reached(phases.TENSORFILE_LOADED)
    return {name: tensors[name] for name in wanted}, combined


def _verify(path: str | os.PathLike[str], name: str, entry: dict[str, Any], tensor: torch.Tensor) -> None:
    import torch

    data = tensor.detach().reshape(-1).view(torch.uint8).cpu().contiguous().numpy()
    got = hashlib.sha256(data.data).hexdigest()
    if got != entry["sha256"]:
        raise StagingError(f"array {name!r} of MLTF tensor file {path} is corrupt: sha256 {got}, the index "
                           f"says {entry['sha256']} ({entry['nbytes']} bytes at offset {entry['offset']}); "
                           "copy or write the file again")


def memmap_array(path: str | os.PathLike[str], name: str) -> numpy.ndarray[Any, Any]:
    """The array as a read-only ``numpy.memmap`` (no torch, no GDS); empty arrays as plain empty arrays."""
    import numpy as np

    entry = _entry(read_index(path), path, name)
    dtype = np.dtype(entry["dtype"])
    shape = tuple(entry["shape"])
    if not entry["nbytes"]:  # mmap cannot map 0 bytes
        empty = np.empty(shape, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", offset=entry["offset"], shape=shape, order="C")


# --- node-local copies --------------------------------------------------------------------------------


def local_copy(path: str | os.PathLike[str], scratch_dir: str | os.PathLike[str] | None) -> Path:
    """Copy the tensor file into ``scratch_dir`` (node-local NVMe) once per node; return the copy's path.

    The copy is named ``<stem>.<key>.mltft``, ``key`` from the sha256 of the index (which holds every array's
    sha256) and the file size, so a changed file gets a new copy and an unchanged one is reused. Concurrent
    callers on one node (ranks) serialise on an ``fcntl`` lock file next to it: one copies (to a temp name,
    fsync, ``os.replace``), the others find the finished copy. ``scratch_dir`` None or ``""`` returns ``path``
    unchanged.
    """
    import fcntl

    src = Path(path)
    if scratch_dir is None or not os.fspath(scratch_dir):  # unset or empty (e.g. MLTF_GDS_SCRATCH="")
        return src
    raw, size = _read_raw_index(src)
    key = hashlib.sha256(raw + str(size).encode()).hexdigest()[:16]
    scratch = Path(scratch_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    stem = src.name[:-len(SUFFIX)] if src.name.endswith(SUFFIX) else src.name
    target = scratch / f"{stem}.{key}{SUFFIX}"
    if _is_copy(target, size):  # os.replace is atomic: an existing target is a whole copy
        return target
    with open(scratch / f".{target.name}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if _is_copy(target, size):
            return target
        fd, tmp_name = tempfile.mkstemp(dir=scratch, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp_name)
            copied = os.stat(tmp_name).st_size
            if copied != size:
                raise StagingError(f"copying MLTF tensor file {src} to {scratch}: wrote {copied} of {size} bytes "
                                   "(is the scratch disk full?)")
            with open(tmp_name, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        _fsync_dir(scratch)
    return target


def _is_copy(target: Path, size: int) -> bool:
    try:
        return target.stat().st_size == size
    except FileNotFoundError:
        return False
