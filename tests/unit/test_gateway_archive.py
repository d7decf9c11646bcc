"""Projects as .tar.gz (mltf_flow.gateway.archive): packed deterministically without what never belongs to a
project, received by content digest within a size limit, and unpacked all or nothing, refusing hostile archives
(real tar files, built here with tarfile)."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mltf_flow.errors import ConfigError, RequestRejected
from mltf_flow.gateway.archive import pack, receive, receive_async, stored, unpack

MiB = 1024 * 1024


def _project(root: Path) -> Path:
    files = {
        "MLproject": "name: demo\n", "pipeline.yaml": "steps: {}\n", "train.py": "print('train')\n",
        "run.sh": "#!/bin/sh\necho run\n", "data/in.csv": "a,b\n1,2\n", "src/pkg/__init__.py": "",
        "__pycache__/train.cpython-311.pyc": "bytecode", "src/pkg/mod.pyc": "bytecode",
        "mlruns/0/meta.yaml": "run", ".venv/bin/python": "venv", "outputs/2024/log.txt": "hydra",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "run.sh").chmod(0o755)
    (root / "src/link.py").symlink_to("../train.py")
    (root / "abs_link.csv").symlink_to(root / "data/in.csv")  # absolute, but inside: travels as relative
    (root / "datalink").symlink_to("data")  # a link to a directory of the project
    return root


def _chunks(path: Path, size: int = 1000) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_round_trip_keeps_files_links_and_exec_bits(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj")
    packed = pack(root, tmp_path / "out" / "proj.tar.gz", limit_bytes=MiB)
    assert packed.files == ("MLproject", "abs_link.csv", "data/in.csv", "datalink", "pipeline.yaml", "run.sh",
                            "src/link.py", "src/pkg/__init__.py", "train.py")
    assert packed.size == packed.path.stat().st_size
    assert packed.digest.startswith("sha256:") and len(packed.digest) == 7 + 64

    archives = tmp_path / "archives"
    digest = receive(_chunks(packed.path), archives, limit_bytes=MiB)
    assert digest == packed.digest
    assert sorted(p.name for p in archives.iterdir()) == [f"{digest}.tar.gz"]

    dest = tmp_path / "unpacked" / "sub-1"
    unpack(stored(archives, digest), dest, max_members=100, max_bytes=MiB)
    found = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() or p.is_symlink())
    assert found == list(packed.files)
    assert (dest / "train.py").read_text() == "print('train')\n"
    assert os.access(dest / "run.sh", os.X_OK) and not os.access(dest / "train.py", os.X_OK)
    assert os.readlink(dest / "src/link.py") == "../train.py"
    assert os.readlink(dest / "abs_link.csv") == "data/in.csv"
    assert (dest / "abs_link.csv").read_text() == "a,b\n1,2\n"
    assert (dest / "datalink" / "in.csv").read_text() == "a,b\n1,2\n"
    assert [p.name for p in dest.parent.iterdir()] == ["sub-1"]  # no temporary directory left


def test_same_project_same_digest(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj")
    first = pack(root, tmp_path / "a.tar.gz", limit_bytes=MiB)
    for path in root.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000), follow_symlinks=False)
    second = pack(root, tmp_path / "other-name.tar.gz", limit_bytes=MiB)
    assert second.digest == first.digest
    assert second.path.read_bytes() == first.path.read_bytes()
    with tarfile.open(first.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}

    (root / "train.py").write_text("print('changed')\n")
    assert pack(root, tmp_path / "c.tar.gz", limit_bytes=MiB).digest != first.digest


def test_git_ignored_files_stay_out(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "out").mkdir(parents=True)
    (root / ".gitignore").write_text("*.root\nout/\n")
    (root / "train.py").write_text("print(1)\n")
    (root / "pipeline.yaml").write_text("steps: {}\n")
    (root / "events.root").write_text("data")
    (root / "out/model.pkl").write_text("model")
    for args in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"],
                 ["add", "-A"], ["commit", "-qm", "init"]):
        _git(root, *args)
    (root / "notes.md").write_text("untracked, not ignored\n")
    (root / "deleted.py").write_text("x\n")
    _git(root, "add", "deleted.py")
    (root / "deleted.py").unlink()  # tracked, gone from the work tree

    packed = pack(root, tmp_path / "p.tar.gz", limit_bytes=MiB)
    assert packed.files == (".gitignore", "notes.md", "pipeline.yaml", "train.py")


def test_a_link_out_of_the_project_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text("print(1)\n")
    (tmp_path / "secret.txt").write_text("s")
    (root / "data.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ConfigError, match=r"data.txt is a symbolic link to .*secret.txt, outside the project"):
        pack(root, tmp_path / "p.tar.gz", limit_bytes=MiB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "secret.txt"]


def test_a_project_without_files_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "__pycache__").mkdir(parents=True)
    (root / "__pycache__" / "a.pyc").write_text("x")
    with pytest.raises(ConfigError, match=r"proj has no files to send \(all its files are caches and outputs\)"):
        pack(root, tmp_path / "p.tar.gz", limit_bytes=MiB)


def test_too_large_names_the_largest_files(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "train.py").write_text("print(1)\n")
    (root / "big.bin").write_bytes(os.urandom(300_000))  # random: gzip cannot shrink it under the limit
    (root / "medium.bin").write_bytes(os.urandom(20_000))
    with pytest.raises(ConfigError, match=r"more than the gateway's limit of 100.0 KiB; its largest files: "
                                          r"big.bin \(293.0 KiB\), medium.bin \(19.5 KiB\), train.py"):
        pack(root, tmp_path / "out" / "p.tar.gz", limit_bytes=100 * 1024)
    assert list((tmp_path / "out").iterdir()) == []


def test_receive_stops_at_the_limit(tmp_path: Path) -> None:
    fed: list[int] = []

    def body() -> Iterator[bytes]:
        for i in range(100):
            fed.append(i)
            yield b"x" * 1000

    with pytest.raises(RequestRejected, match="larger than the gateway's limit") as caught:
        receive(body(), tmp_path, limit_bytes=5500)
    assert caught.value.status == 413
    assert len(fed) == 6  # refused at the chunk that passed the limit, not after reading all of it
    assert list(tmp_path.iterdir()) == []


def test_receive_async_and_content_addressing(tmp_path: Path) -> None:
    async def body(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 7):
            yield data[i:i + 7]

    data = b"some archive bytes" * 10
    digest = asyncio.run(receive_async(body(data), tmp_path, limit_bytes=1000))
    kept = tmp_path / f"{digest}.tar.gz"
    inode = kept.stat().st_ino
    assert kept.read_bytes() == data
    assert receive([data], tmp_path, limit_bytes=1000) == digest
    assert kept.stat().st_ino == inode  # already stored: kept as it was
    assert list(tmp_path.iterdir()) == [kept]
    with pytest.raises(RequestRejected) as caught:
        asyncio.run(receive_async(body(data), tmp_path, limit_bytes=100))
    assert caught.value.status == 413
    assert list(tmp_path.iterdir()) == [kept]


@pytest.mark.parametrize("digest", ["../../etc/passwd", "sha256:abc", "md5:" + "0" * 64, "sha256:" + "A" * 64])
def test_stored_refuses_malformed_digests(tmp_path: Path, digest: str) -> None:
    with pytest.raises(RequestRejected, match="is not of the form sha256:") as caught:
        stored(tmp_path, digest)
    assert caught.value.status == 422


def test_stored_refuses_an_archive_never_uploaded(tmp_path: Path) -> None:
    with pytest.raises(RequestRejected, match=r"upload the project first \(PUT /api/v1/archives\)"):
        stored(tmp_path, "sha256:" + "0" * 64)


# ---------------------------------------------------------------------------------------------- hostile archives


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, linkname, size, 0o644
    return info


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            carries = info.isfile() or info.type == tarfile.XHDTYPE  # data follows the header
            info.size = len(data) if carries else info.size
            tar.addfile(info, io.BytesIO(data) if carries else None)
    return path


def _assert_refused(tmp_path: Path, archive: Path, match: str, **limits: int) -> None:
    dest = tmp_path / "unpacked" / "dest"
    with pytest.raises(RequestRejected, match=match) as caught:
        unpack(archive, dest, max_members=limits.get("max_members", 100), max_bytes=limits.get("max_bytes", MiB))
    assert caught.value.status == 400
    assert list(dest.parent.iterdir()) == []  # nothing written, no temporary directory left
    assert not (tmp_path / "evil").exists()


OK = (_info("ok.txt"), b"fine")
HOSTILE = {
    "dotdot": ([OK, (_info("../evil"), b"x")], r"member '../evil' has an absolute path or a '..' component"),
    "inner-dotdot": ([OK, (_info("a/../../evil"), b"x")], r"member 'a/../../evil' has an absolute path"),
    "absolute": ([OK, (_info("/etc/x"), b"x")], r"member '/etc/x' has an absolute path"),
    "symlink-passwd": ([OK, (_info("passwd", tarfile.SYMTYPE, "/etc/passwd"), b"")],
                       r"member 'passwd' is a symbolic link to '/etc/passwd', outside the project"),
    "symlink-up": ([(_info("sub/up", tarfile.SYMTYPE, "../../evil"), b"")],
                   r"member 'sub/up' is a symbolic link to '../../evil', outside the project"),
    "hardlink-out": ([OK, (_info("h", tarfile.LNKTYPE, "../evil"), b"")],
                     r"member 'h' is a hard link to '../evil', outside the project"),
    "hardlink-passwd": ([(_info("h", tarfile.LNKTYPE, "/etc/passwd"), b"")],
                        r"member 'h' is a hard link to '/etc/passwd', outside the project"),
    "hardlink-ahead": ([(_info("h", tarfile.LNKTYPE, "later.txt"), b""), (_info("later.txt"), b"x")],
                       r"member 'h' is a hard link to 'later.txt', not a file before it"),
    "device": ([(_info("dev/sda", tarfile.BLKTYPE), b"")], r"member 'dev/sda' is a device or fifo"),
    "chardev": ([(_info("null", tarfile.CHRTYPE), b"")], r"member 'null' is a device or fifo"),
    "fifo": ([(_info("pipe", tarfile.FIFOTYPE), b"")], r"member 'pipe' is a device or fifo"),
    # Through a link: `l` is the project itself, so `m` -> l/.. is its parent.
    "link-chain": ([(_info("l", tarfile.SYMTYPE, "."), b""), (_info("m", tarfile.SYMTYPE, "l/.."), b"")],
                   r"member 'm' is a symbolic link to 'l/..', outside the project"),
    # `m` -> x/.. looks inside while x does not exist; once x -> . exists, m leads out (and m/evil with it).
    "link-made-out-later": ([(_info("m", tarfile.SYMTYPE, "x/.."), b""), (_info("x", tarfile.SYMTYPE, "."), b""),
                             (_info("m/evil"), b"x")],
                            r"member 'm/evil' would be written through a link outside the project"),
    "link-left-out": ([(_info("m", tarfile.SYMTYPE, "x/.."), b""), (_info("x", tarfile.SYMTYPE, "."), b"")],
                      r"member 'm' is a symbolic link that leads outside the project"),
    "conflict": ([(_info("a"), b"file"), (_info("a/b"), b"x")], r"member 'a/b' conflicts with an earlier member"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused(tmp_path: Path, case: str) -> None:
    members, match = HOSTILE[case]
    _assert_refused(tmp_path, _write_tar(tmp_path / "a.tar.gz", members), match)


def test_too_many_members(tmp_path: Path) -> None:
    archive = _write_tar(tmp_path / "a.tar.gz", [(_info(f"f{i:05d}"), b"") for i in range(10_000)])
    _assert_refused(tmp_path, archive, r"more than 1000 members \(at 'f01000'\)", max_members=1000)


def test_gzip_bomb_of_zeros_is_refused_before_it_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    info = _info("zeros.bin", size=200 * MiB)
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(info, _Zeros(info.size))
    assert archive.stat().st_size < MiB  # 200 MiB of zeros compress to a few hundred KiB
    _assert_refused(tmp_path, archive, r"more than 1.0 MiB unpacked \(at 'zeros.bin'\)", max_bytes=MiB)


def _pax(comment: str) -> tarfile.TarInfo:
    info = _info("small.txt")
    info.pax_headers = {"comment": comment}
    return info


def _raw_pax(records: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A pax header member with these exact bytes as its records (tarfile's writer only writes good ones)."""
    return _info("././@PaxHeader", tarfile.XHDTYPE), records


# Headers tarfile (before 3.11.10, CVE-2024-6232) parses in quadratic time: 100 KB cost 16 s of CPU here.
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("members", "match"), [
    ([(_pax("0" * 8 * MiB), b"")], r"an extended header of \d+ bytes \(at most 16384\)"),
    ([(_pax("0" * 10_000), b"")], r"a pax header with a run of digits longer than 64"),
    ([_raw_pax(b"2 " * 5000 + b"=x\n"), (_info("a.txt"), b"x")], r"a pax header with a malformed record"),
    ([_raw_pax(b"0 path=a\n"), (_info("a.txt"), b"x")], r"a pax header with a malformed record"),
    ([_raw_pax(b"16 size=9999999\n"), (_info("a.txt"), b"x")], r"a pax header with a 'size' record"),
    ([(_info("s", tarfile.GNUTYPE_SPARSE), b"")], r"a GNU sparse member"),
    ([(_info(f"f{i}"), b"") for i in range(3)], None),
], ids=["huge", "digits", "no-equals", "zero-length", "size", "sparse", "plain"])
def test_hostile_headers_are_refused_before_tarfile_parses_them(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], match: str | None,
) -> None:
    archive = _write_tar(tmp_path / "a.tar.gz", members)
    if match is None:  # the same path, a harmless archive: unpacked
        unpack(archive, tmp_path / "ok", max_members=10, max_bytes=MiB)
        assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["f0", "f1", "f2"]
        return
    _assert_refused(tmp_path, archive, match)


def test_headers_count_against_the_unpacked_bytes(tmp_path: Path) -> None:
    """Well-formed headers of 15 KiB each, on members of 0 bytes: the stream read is bounded all the same."""
    archive = _write_tar(tmp_path / "a.tar.gz", [(_pax("a b " * 3800), b"") for _ in range(10)])
    _assert_refused(tmp_path, archive, r"more than 1.0 KiB unpacked \(a compressed bomb\?\)", max_bytes=1024,
                    max_members=10)


def test_long_names_travel(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    deep = root / "/".join(["directory-with-a-long-name"] * 8)
    deep.mkdir(parents=True)
    (deep / "train.py").write_text("print(1)\n")
    (root / "link.py").symlink_to(deep / "train.py")
    packed = pack(root, tmp_path / "p.tar.gz", limit_bytes=MiB)
    unpack(packed.path, tmp_path / "dest", max_members=10, max_bytes=MiB)
    rel = deep.relative_to(root) / "train.py"
    assert (tmp_path / "dest" / rel).read_text() == "print(1)\n"
    assert os.readlink(tmp_path / "dest" / "link.py") == str(rel)


def test_corrupt_archives_are_refused(tmp_path: Path) -> None:
    _assert_refused(tmp_path, _bytes(tmp_path / "random", os.urandom(5000)), r"not a .tar.gz archive")
    _assert_refused(tmp_path, _bytes(tmp_path / "text", gzip.compress(b"not a tar " * 1000)), r"not a .tar.gz archive")
    # Zeros are a valid, empty tar: nothing a submission can run.
    _assert_refused(tmp_path, _bytes(tmp_path / "zeros", gzip.compress(b"\0" * 10_240)), r"holds no files")
    whole = _write_tar(tmp_path / "whole.tar.gz", [(_info("a.txt"), os.urandom(50_000))]).read_bytes()
    _assert_refused(tmp_path, _bytes(tmp_path / "cut", whole[: len(whole) // 2]), r"not a .tar.gz archive")


def test_hard_link_inside_the_project_is_unpacked(tmp_path: Path) -> None:
    archive = _write_tar(tmp_path / "a.tar.gz", [(_info("a.txt"), b"data"), (_info("b.txt", tarfile.LNKTYPE,
                                                                                 "a.txt"), b"")])
    unpack(archive, tmp_path / "dest", max_members=10, max_bytes=MiB)
    assert (tmp_path / "dest/b.txt").read_bytes() == b"data"


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self.left if size < 0 else min(size, self.left)
        self.left -= n
        return b"\0" * n


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
