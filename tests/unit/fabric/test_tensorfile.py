"""The MLTF tensor file: layout, byte-exact round trips, clear errors, atomic writes, node-local copies."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mltf_flow.errors import ConfigError, StagingError
from mltf_flow.fabric import gds, tensorfile
from mltf_flow.fabric.tensorfile import (
    load_array,
    load_arrays,
    local_copy,
    memmap_array,
    read_index,
    write_tensor_file,
)

ALIGN = 4096
DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool", "complex64", "complex128"]
SHAPES = [(0,), (1,), (3, 5), (4097,), ()]


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    if dtype == "bool":
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    raw = rng.integers(0, 256, n * np.dtype(dtype).itemsize, dtype=np.uint8)
    arr = raw.view(dtype).reshape(shape)
    if arr.dtype.kind in "fc":  # keep NaN bit patterns out: array_equal treats NaN != NaN
        arr = np.where(np.isfinite(arr), arr, 1.5).astype(dtype)
    return arr


def mixed() -> dict[str, np.ndarray[Any, Any]]:
    return {"x": sample("float32", (3, 5)), "empty": np.zeros((0,), np.int16), "scalar": np.array(2.5),
            "mask": sample("bool", (7,)), "ids": sample("int64", (4097,)), "tail": sample("uint8", (1,))}


def same_bytes(got: Any, want: np.ndarray[Any, Any]) -> bool:
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want, dtype=want.dtype.newbyteorder("<") if want.dtype.byteorder == ">" else want.dtype)
    return bool(got.shape == want.shape and got.dtype == want.dtype and got.tobytes() == want.tobytes())


# --- layout ---------------------------------------------------------------------------------------------


def test_layout_is_aligned_and_described_by_the_index(tmp_path: Path) -> None:
    path = tmp_path / "f.mltft"
    index = write_tensor_file(path, mixed(), meta={"run": "abc", "n": 3, "ünïcode": [1.5, None]})
    raw = path.read_bytes()
    assert raw[:8] == b"MLTFTNS1"
    (length,) = struct.unpack("<Q", raw[8:16])
    assert json.loads(raw[16:16 + length].decode("utf-8")) == index == read_index(path)
    header = -(-(16 + length) // ALIGN) * ALIGN
    assert raw[16 + length:header] == bytes(header - 16 - length)  # header padding is zeros
    assert len(raw) % ALIGN == 0
    assert index["version"] == 1 and index["alignment"] == ALIGN
    assert index["meta"] == {"run": "abc", "n": 3, "ünïcode": [1.5, None]}
    expect = header
    for name, entry in index["arrays"].items():  # in write order, back to back, each padded to 4096
        assert entry["offset"] % ALIGN == 0 and entry["offset"] == expect, name
        data = raw[entry["offset"]:entry["offset"] + entry["nbytes"]]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        pad_end = entry["offset"] + -(-entry["nbytes"] // ALIGN) * ALIGN
        assert raw[entry["offset"] + entry["nbytes"]:pad_end] == bytes(pad_end - entry["offset"] - entry["nbytes"])
        expect = pad_end
    assert expect == len(raw)
    assert index["arrays"]["x"] == {**index["arrays"]["x"], "dtype": "<f4", "shape": [3, 5], "nbytes": 60}
    assert index["arrays"]["scalar"]["shape"] == [] and index["arrays"]["mask"]["dtype"] == "|b1"


def test_header_grows_past_one_block_for_a_big_index(tmp_path: Path) -> None:
    arrays = {f"array_{i:04d}_{'n' * 40}": np.full(3, i, np.int32) for i in range(200)}
    index = write_tensor_file(tmp_path / "many.mltft", arrays)
    first = min(e["offset"] for e in index["arrays"].values())
    assert first > ALIGN and first % ALIGN == 0
    got, _ = load_arrays(tmp_path / "many.mltft")
    assert all(same_bytes(got[n], a) for n, a in arrays.items())


def test_no_meta_and_no_arrays(tmp_path: Path) -> None:
    index = write_tensor_file(tmp_path / "e.mltft", {})
    assert index == {"version": 1, "alignment": ALIGN, "arrays": {}, "meta": {}}
    assert (tmp_path / "e.mltft").stat().st_size == ALIGN
    tensors, info = load_arrays(tmp_path / "e.mltft")
    assert tensors == {} and info.nbytes == 0


# --- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype_and_odd_shapes(tmp_path: Path, dtype: str) -> None:
    arrays = {f"a{i}": sample(dtype, shape, seed=i) for i, shape in enumerate(SHAPES)}
    path = tmp_path / f"{dtype}.mltft"
    write_tensor_file(path, arrays)
    for name, want in arrays.items():
        tensor, info = load_array(path, name, device="cpu")
        assert tensor.dtype == tensorfile.torch_dtype(read_index(path)["arrays"][name]["dtype"])
        assert same_bytes(tensor, want), (dtype, name)
        aligned = -(-want.nbytes // ALIGN) * ALIGN
        assert (info.backend, info.nbytes) == (("posix", aligned) if want.nbytes else ("none", 0))
        mm = memmap_array(path, name)
        assert same_bytes(mm, want) and not mm.flags.writeable, (dtype, name)


def test_big_endian_and_non_contiguous_inputs_are_stored_little_endian_c_order(tmp_path: Path) -> None:
    base = np.arange(60, dtype=np.int64).reshape(6, 10)
    arrays = {"be": base.astype(">i8"), "t": base.T, "strided": base[::2, ::3], "f": np.asfortranarray(base)}
    index = write_tensor_file(tmp_path / "c.mltft", arrays)
    assert {e["dtype"] for e in index["arrays"].values()} == {"<i8"}
    for name, want in arrays.items():
        tensor, _ = load_array(tmp_path / "c.mltft", name)
        assert np.array_equal(tensor.numpy(), want) and tensor.is_contiguous()
        assert np.array_equal(memmap_array(tmp_path / "c.mltft", name), want)


def test_load_arrays_reads_the_covering_range_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.mltft"
    arrays = mixed()
    index = write_tensor_file(path, arrays)
    calls: list[tuple[int, int | None]] = []
    real = gds.read_tensor

    def spy(*args: Any, **kw: Any) -> Any:
        calls.append((kw["offset"], kw["nbytes"]))
        return real(*args, **kw)

    monkeypatch.setattr(gds, "read_tensor", spy)
    tensors, info = load_arrays(path, device="cpu")
    first = min(e["offset"] for e in index["arrays"].values())
    assert calls == [(first, path.stat().st_size - first)]
    assert info.nbytes == path.stat().st_size - first and info.backend == "posix" and info.seconds > 0
    assert list(tensors) == list(arrays)
    assert all(same_bytes(tensors[n], a) for n, a in arrays.items())

    calls.clear()  # a subset of neighbours: still one read, of just their range
    tensors, info = load_arrays(path, ["mask", "scalar", "mask"])
    assert list(tensors) == ["mask", "scalar"] and len(calls) == 1
    assert info.nbytes == 2 * ALIGN and same_bytes(tensors["scalar"], arrays["scalar"])


def test_load_arrays_splits_reads_around_a_large_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gap.mltft"
    arrays = {"a": sample("int32", (10,)), "big": np.zeros(3 << 20, np.uint8), "b": sample("float64", (5,))}
    write_tensor_file(path, arrays)
    calls: list[int] = []
    real = gds.read_tensor
    monkeypatch.setattr(gds, "read_tensor", lambda *a, **kw: calls.append(kw["nbytes"]) or real(*a, **kw))
    tensors, info = load_arrays(path, ["b", "a"])
    assert calls == [ALIGN, ALIGN] and info.nbytes == 2 * ALIGN
    assert same_bytes(tensors["a"], arrays["a"]) and same_bytes(tensors["b"], arrays["b"])


def test_a_named_backend_that_cannot_run_is_a_clear_error(tmp_path: Path) -> None:
    write_tensor_file(tmp_path / "k.mltft", {"a": np.ones(3)})
    with pytest.raises(gds.BackendUnavailable):
        load_array(tmp_path / "k.mltft", "a", device="cpu", backend="kvikio")


@pytest.mark.gpu
def test_round_trip_onto_the_gpu(tmp_path: Path) -> None:
    arrays = mixed()
    write_tensor_file(tmp_path / "g.mltft", arrays)
    tensors, info = load_arrays(tmp_path / "g.mltft", device="cuda", verify=True)
    assert all(t.is_cuda for t in tensors.values()), info
    assert all(same_bytes(tensors[n].cpu(), a) for n, a in arrays.items())


def test_importing_the_module_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, mltf_flow.fabric.tensorfile; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- errors ----------------------------------------------------------------------------------------------


def test_wrong_magic_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.mltft"
    write_tensor_file(path, {"a": np.ones(4)})
    with open(path, "r+b") as f:
        f.write(b"NOTMLTF!")
    for call in (lambda: read_index(path), lambda: load_array(path, "a"), lambda: memmap_array(path, "a"),
                 lambda: local_copy(path, tmp_path / "scratch")):
        with pytest.raises(ConfigError, match=r"bad\.mltft is not an MLTF tensor file.*NOTMLTF"):
            call()
    (tmp_path / "tiny").write_bytes(b"MLT")
    with pytest.raises(ConfigError, match="tiny is not an MLTF tensor file"):
        read_index(tmp_path / "tiny")


@pytest.mark.parametrize("keep", [10, 100, -1, -ALIGN])
def test_truncated_file_is_named(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "cut.mltft"
    write_tensor_file(path, {"a": sample("float32", (3000,)), "b": sample("int8", (5000,))})
    size = path.stat().st_size
    os.truncate(path, keep if keep > 0 else size + keep)
    with pytest.raises(ConfigError, match=r"cut\.mltft is truncated"):
        read_index(path)
    with pytest.raises(ConfigError, match=r"cut\.mltft is truncated"):
        load_arrays(path)


def test_corrupt_index_is_named(tmp_path: Path) -> None:
    path = tmp_path / "idx.mltft"
    write_tensor_file(path, {"a": np.ones(4)})
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"offset":') + len(b'"offset":')
    raw[at:at + 4] = b"4097"  # an unaligned offset
    path.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match=r"idx\.mltft has a corrupt index entry for array 'a'"):
        read_index(path)
    raw[18:25] = b'verzion'
    path.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match=r"idx\.mltft has index version None; this mltf_flow reads version 1"):
        read_index(path)
    raw[16] = ord("[")
    path.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match=r"idx\.mltft has a corrupt index \(not UTF-8 JSON\)"):
        read_index(path)


def test_unknown_array_name_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "n.mltft"
    write_tensor_file(path, {"alpha": np.ones(2), "beta": np.zeros(3)})
    for call in (lambda: load_array(path, "gamma"), lambda: load_arrays(path, ["alpha", "gamma"]),
                 lambda: memmap_array(path, "gamma")):
        with pytest.raises(ConfigError, match=r"n\.mltft has no array 'gamma' \(it has: 'alpha', 'beta'\)"):
            call()


def test_verify_detects_a_flipped_byte(tmp_path: Path) -> None:
    path = tmp_path / "v.mltft"
    arrays = {"good": sample("float32", (100,)), "bad": sample("int64", (4097,))}
    index = write_tensor_file(path, arrays)
    assert same_bytes(load_array(path, "bad", verify=True)[0], arrays["bad"])
    with open(path, "r+b") as f:
        at = index["arrays"]["bad"]["offset"] + 12345
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    assert not same_bytes(load_array(path, "bad")[0], arrays["bad"])  # without verify: silently wrong data
    with pytest.raises(StagingError, match=r"array 'bad' of MLTF tensor file .*v\.mltft is corrupt: sha256"):
        load_array(path, "bad", verify=True)
    with pytest.raises(StagingError, match="array 'bad'"):
        load_arrays(path, verify=True)
    assert same_bytes(load_array(path, "good", verify=True)[0], arrays["good"])


@pytest.mark.parametrize(("arrays", "match"), [
    ({"o": np.array([1, "a"], dtype=object)}, "array 'o' has dtype object"),
    ({"s": np.array(["ab", "c"])}, "array 's' has dtype <U2"),
    ({"r": np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")])}, "array 'r' has dtype"),
    ({"t": np.array(["2024-01-01"], dtype="datetime64[D]")}, "array 't' has dtype datetime64"),
    ({"": np.ones(2)}, "array names must be non-empty strings, got ''"),
    ({3: np.ones(2)}, "array names must be non-empty strings, got 3"),
])
def test_unstorable_arrays_are_rejected(tmp_path: Path, arrays: dict[Any, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        write_tensor_file(tmp_path / "x.mltft", {"fine": np.ones(3), **arrays})
    assert list(tmp_path.iterdir()) == []


def test_meta_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="meta must be a JSON-able mapping"):
        write_tensor_file(tmp_path / "x.mltft", {"a": np.ones(2)}, meta={"when": object()})
    with pytest.raises(ConfigError, match="no NaN"):
        write_tensor_file(tmp_path / "x.mltft", {"a": np.ones(2)}, meta={"loss": float("nan")})
    assert list(tmp_path.iterdir()) == []


# --- atomic writes -------------------------------------------------------------------------------------------


def test_failure_half_way_leaves_nothing_and_keeps_the_old_file(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "atomic.mltft"
    real = hashlib.sha256
    started: list[int] = []

    def failing_sha256(*args: Any) -> Any:
        started.append(1)
        if len(started) == 2:  # the first array is written, the second fails
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(tensorfile.hashlib, "sha256", failing_sha256)
    with pytest.raises(OSError, match="No space left"):
        write_tensor_file(path, {"a": np.ones(5000), "b": np.zeros(5000)})
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(tensorfile.hashlib, "sha256", real)
    write_tensor_file(path, {"old": np.arange(4)})
    before = path.read_bytes()
    started.clear()
    monkeypatch.setattr(tensorfile.hashlib, "sha256", failing_sha256)
    with pytest.raises(OSError):
        write_tensor_file(path, {"a": np.ones(5000), "b": np.zeros(5000)})
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


def test_failing_rename_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: Any, dst: Any) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(tensorfile.os, "replace", refuse)
    with pytest.raises(PermissionError):
        write_tensor_file(tmp_path / "r.mltft", {"a": np.ones(3)})
    assert list(tmp_path.iterdir()) == []


def test_interrupt_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tensorfile.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_tensor_file(tmp_path / "i.mltft", {"a": np.ones(3)})
    assert list(tmp_path.iterdir()) == []


# --- node-local copies ------------------------------------------------------------------------------------------


def test_local_copy_without_scratch_is_the_file_itself(tmp_path: Path) -> None:
    path = tmp_path / "s.mltft"
    write_tensor_file(path, {"a": np.ones(3)})
    assert local_copy(path, None) == path
    assert local_copy(str(path), None) == path
    assert local_copy(path, "") == path  # an empty MLTF_GDS_SCRATCH means none


def test_local_copy_copies_once_and_recopies_a_changed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "data" / "features.mltft"
    arrays = {"x": sample("float32", (20000,)), "y": sample("int8", (9,))}
    write_tensor_file(src, arrays, meta={"v": 1})
    copies: list[tuple[str, str]] = []
    real_copy = tensorfile.shutil.copyfile

    def counting(a: Any, b: Any) -> Any:
        copies.append((str(a), str(b)))
        return real_copy(a, b)

    monkeypatch.setattr(tensorfile.shutil, "copyfile", counting)
    scratch = tmp_path / "nvme" / "user"  # created on demand
    first = local_copy(src, scratch)
    assert first.parent == scratch and first.name.startswith("features.") and first.suffix == ".mltft"
    assert first.read_bytes() == src.read_bytes() and len(copies) == 1
    mtime = first.stat().st_mtime_ns
    time.sleep(0.01)
    assert local_copy(src, scratch) == first
    assert len(copies) == 1 and first.stat().st_mtime_ns == mtime
    assert all(same_bytes(load_arrays(first)[0][n], a) for n, a in arrays.items())
    assert not [p for p in scratch.iterdir() if p.name.endswith(".tmp")]

    write_tensor_file(src, {**arrays, "x": arrays["x"] + 1}, meta={"v": 2})  # new content: a new copy
    second = local_copy(src, scratch)
    assert second != first and len(copies) == 2 and second.read_bytes() == src.read_bytes()


def test_local_copy_failure_leaves_no_partial_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "f.mltft"
    write_tensor_file(src, {"a": np.ones(9000)})

    def short_copy(a: Any, b: Any) -> None:
        Path(b).write_bytes(Path(a).read_bytes()[:5000])

    monkeypatch.setattr(tensorfile.shutil, "copyfile", short_copy)
    with pytest.raises(StagingError, match="wrote 5000 of"):
        local_copy(src, tmp_path / "scratch")
    assert [p.name for p in (tmp_path / "scratch").iterdir() if not p.name.endswith(".lock")] == []


def _copy_in_child(src: str, scratch: str, log: str, go: Any, out: Any) -> None:
    real_copy = tensorfile.shutil.copyfile

    def slow_logged_copy(a: Any, b: Any) -> Any:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # the other process arrives while this one copies
        return real_copy(a, b)

    tensorfile.shutil.copyfile = slow_logged_copy  # type: ignore[assignment]  # in this child process only
    go.wait()
    out.put(str(local_copy(src, scratch)))


def test_concurrent_ranks_on_one_node_copy_once(tmp_path: Path) -> None:
    src = tmp_path / "shared.mltft"
    write_tensor_file(src, {"x": sample("float64", (300000,))})
    scratch, log = tmp_path / "scratch", tmp_path / "copies.log"
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_copy_in_child, args=(str(src), str(scratch), str(log), go, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert len(log.read_text().split()) == 1  # one process copied
    copies = [p for p in scratch.iterdir() if not p.name.startswith(".")]
    assert copies == [Path(results[0])] and copies[0].read_bytes() == src.read_bytes()
    assert not [p for p in scratch.iterdir() if p.name.endswith(".tmp")]
