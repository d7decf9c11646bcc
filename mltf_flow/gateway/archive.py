"""Projects on their way to the gateway as ``.tar.gz``: packed on the user's side (:func:`pack`), received into
a content-addressed store (:class:`Receiver`, :func:`receive`, :func:`receive_async`) and unpacked for a
submission (:func:`unpack`) on the gateway's.

An archive holds a project's files and nothing else: no directory entries, no owners, every mtime 0, modes
0644 or 0755 (the exec bit is what a project needs), members sorted, the gzip header without name or time, so
the same project always packs to the same digest (and the gateway stores it once). What never belongs to a
project's code or inputs stays out: :data:`mltf_flow.code_set.SKIP_DIRS` (``.git``, caches, ``mlruns``, tools'
outputs), bytecode and, in a git work tree, git-ignored files. Symbolic links travel only when they point
inside the project.

The gateway trusts nothing in an upload: its size is counted as it arrives (413 past the limit), and unpacking
refuses, naming the member, absolute paths, ``..``, links that leave the project, devices and fifos, more
members or more bytes than allowed (a gzip bomb is refused while it is read, before it is written). Unpacking
happens in a temporary directory renamed into place, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from mltf_flow.code_set import SKIP_DIRS, _maybe_in_git
from mltf_flow.errors import ConfigError, RequestRejected

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_BYTECODE = (".pyc", ".pyo")
# A tar header block, and what a member may add around its data (a pax header, its data block, padding):
# the allowance for headers when the decompressed stream is bounded by the members' bytes.
_BLOCK = 512
_PER_MEMBER_OVERHEAD = 4 * _BLOCK
_CHUNK = 1024 * 1024
# Extended headers hold a member's long path and link (PATH_MAX is 4096 each) and a few attributes.
_MAX_HEADER_BYTES = 16 * 1024
_LONG_DIGITS = re.compile(rb"\d{65}")
_PAX_RECORD = re.compile(rb"(\d{1,20}) ([^=\n]{1,256})=")


@dataclass(frozen=True)
class PackedArchive:
    """A packed project: where the archive is, its content digest (``sha256:<hex>``), its size in bytes and the
    project's files in it (relative, sorted)."""

    path: Path
    digest: str
    size: int
    files: tuple[str, ...]


# ---------------------------------------------------------------------------------------------- the client's side


def _left_out(rel: str) -> bool:
    """Never a project's code or input: below (or being) a skipped directory (``.git`` may be a file in a
    worktree), bytecode. Unlike :func:`mltf_flow.code_set.skipped`, ``pipeline.yaml``, ``luigi.cfg`` and the
    like travel: the gateway runs the project from them."""
    parts = rel.split("/")
    return bool(SKIP_DIRS.intersection(parts)) or parts[-1].endswith(_BYTECODE)


def _git_files(root: Path) -> list[str] | None:
    """Tracked and untracked, not-ignored paths under ``root``; None outside git. (code_set's own listing
    drops the files it never hashes, such as pipeline.yaml, which a project's archive must hold.)"""
    if not _maybe_in_git(root):
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, text=True, check=False, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    # --cached lists deleted-but-tracked files (absent from the work tree) and submodules (directories).
    return sorted({rel for rel in out.stdout.split("\0")
                   if rel and ((root / rel).is_symlink() or (root / rel).is_file())})


def _walked_files(root: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        # A link to a directory is an entry of its own (checked like any link), never descended into.
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and d not in links)
        found.extend(prefix + name for name in [*filenames, *links])
    return sorted(found)


def project_files(root: Path) -> list[str]:
    """The project's files and links that an archive holds (relative, sorted)."""
    listed = _git_files(root)
    return [rel for rel in (listed if listed is not None else _walked_files(root)) if not _left_out(rel)]


def _member(root: Path, rel: str, in_git: bool) -> tarfile.TarInfo | None:
    path = root / rel
    st = path.lstat()
    info = tarfile.TarInfo(rel)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root):
            fix = "git-ignore it" if in_git else "remove it"
            raise ConfigError(
                f"{path} is a symbolic link to {os.readlink(path)}, outside the project {root}: the gateway "
                f"receives only the project's own files. Copy what it points at into the project, or {fix}."
            )
        # Relative to the link's own directory, through no other link: it means the same once unpacked.
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, os.path.relpath(target, path.parent)
        return info
    if not path.is_file():
        return None  # a socket or fifo in the project directory: nothing a project can ship
    info.size, info.mode = st.st_size, 0o755 if st.st_mode & 0o111 else 0o644
    return info


class _TooLarge(Exception):
    """The archive being written passed the limit (internal: :func:`pack` turns it into a ConfigError)."""


class _HashingWriter:
    """The file under the gzip stream: counts and hashes what is written, and stops past the limit."""

    def __init__(self, out: IO[bytes], limit: int) -> None:
        self.out, self.limit, self.size, self.sha = out, limit, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise _TooLarge
        self.sha.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _too_large(root: Path, members: list[tarfile.TarInfo], limit: int, in_git: bool) -> ConfigError:
    largest = sorted((m for m in members if m.isfile()), key=lambda m: (-m.size, m.name))[:5]
    named = ", ".join(f"{m.name} ({_human(m.size)})" for m in largest)
    fix = ("list them in the project's .gitignore" if in_git
           else "move them out of the project directory (or make it a git repository and git-ignore them)")
    return ConfigError(
        f"the project {root} packs to more than the gateway's limit of {_human(limit)}; its largest files: "
        f"{named}. Leave data out of the project: {fix}, and give large inputs as datasets (rucio:// URIs)."
    )


def pack(project_dir: Path, dest: Path, *, limit_bytes: int) -> PackedArchive:
    """Pack the project at ``project_dir`` into ``dest`` (a ``.tar.gz``, replaced atomically). ConfigError
    for a link that leaves the project, or an archive over ``limit_bytes`` (naming the largest files)."""
    root = project_dir.resolve()
    if not root.is_dir():
        raise ConfigError(f"{project_dir} is not a directory: give the project's directory to submit.")
    listed = _git_files(root)
    in_git = listed is not None
    members = [m for rel in project_files(root) if (m := _member(root, rel, in_git)) is not None]
    if not members:
        left = "all its files are git-ignored or" if in_git else "all its files are"
        raise ConfigError(f"the project {root} has no files to send ({left} caches and outputs).")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            writer = _HashingWriter(raw, limit_bytes)
            try:
                # No file name and mtime 0 in the gzip header: the digest depends on the files only.
                with gzip.GzipFile(filename="", mode="wb", fileobj=writer, mtime=0) as gz, \
                        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for info in members:
                        if info.isfile():
                            with (root / info.name).open("rb") as data:
                                tar.addfile(info, data)
                        else:
                            tar.addfile(info)
            except _TooLarge:
                raise _too_large(root, members, limit_bytes, in_git) from None
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return PackedArchive(path=dest, digest=f"sha256:{writer.sha.hexdigest()}", size=writer.size,
                         files=tuple(m.name for m in members))


# -------------------------------------------------------------------------------------------- the gateway's side


def stored(archives: Path, digest: str) -> Path:
    """The stored archive of ``digest`` (as a submission names it). RequestRejected (422) for a malformed
    digest (never a path outside ``archives``) or one never uploaded."""
    if not _DIGEST.match(digest):
        raise RequestRejected(f"archive digest {digest!r} is not of the form sha256:<64 hex digits>.", status=422)
    path = archives / f"{digest}.tar.gz"
    if not path.is_file():
        raise RequestRejected(
            f"no archive {digest} on the gateway: upload the project first (PUT /api/v1/archives).", status=422
        )
    return path


class Receiver:
    """One upload being written to ``dest_dir/<digest>.tar.gz``: :meth:`feed` the body's chunks as they arrive
    (413 as soon as they pass ``limit_bytes``), :meth:`finish` for the digest; :meth:`abort` (or leaving the
    ``with`` block on an error) removes what was written. Already stored, an archive is kept as it is."""

    def __init__(self, dest_dir: Path, *, limit_bytes: int) -> None:
        dest_dir.mkdir(parents=True, exist_ok=True)
        self.dest_dir, self.limit, self.size = dest_dir, limit_bytes, 0
        self._sha = hashlib.sha256()
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=dest_dir)
        self._tmp = Path(name)
        self._out: IO[bytes] = os.fdopen(fd, "wb")

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.abort()
            raise RequestRejected(
                f"the archive is larger than the gateway's limit of {_human(self.limit)}: leave data out of the "
                f"project (git-ignore it) and give large inputs as datasets.", status=413,
            )
        self._sha.update(chunk)
        self._out.write(chunk)

    def finish(self) -> str:
        self._out.flush()
        os.fsync(self._out.fileno())  # the digest is recorded once answered: the bytes must be on disk
        self._out.close()
        digest = f"sha256:{self._sha.hexdigest()}"
        target = self.dest_dir / f"{digest}.tar.gz"
        if target.exists():
            self._tmp.unlink(missing_ok=True)
        else:
            os.replace(self._tmp, target)
        return digest

    def abort(self) -> None:
        self._out.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            self.abort()


def receive(chunks: Iterable[bytes], dest_dir: Path, *, limit_bytes: int) -> str:
    """Store an upload read from ``chunks``; its digest (``sha256:<hex>``)."""
    with Receiver(dest_dir, limit_bytes=limit_bytes) as receiver:
        for chunk in chunks:
            receiver.feed(chunk)
        return receiver.finish()


async def receive_async(chunks: AsyncIterable[bytes], dest_dir: Path, *, limit_bytes: int) -> str:
    """:func:`receive` for an async body (Starlette's ``request.stream()``)."""
    with Receiver(dest_dir, limit_bytes=limit_bytes) as receiver:
        async for chunk in chunks:
            receiver.feed(chunk)
        return receiver.finish()


class _Oversize(Exception):
    """The decompressed stream passed its bound (internal: never a ValueError tarfile could take for its own)."""


class _BadHeader(Exception):
    """An extended header we refuse before tarfile parses it (internal; the message says why)."""


def _pax_well_formed(data: bytes) -> str | None:
    """Why a pax header's records are refused, or None. tarfile before 3.11.10 searches them with regular
    expressions that take quadratic time on long runs of digits or records without '=' (CVE-2024-6232): a
    100 KB header costs 16 s of CPU. Well-formed records with short digit runs keep its parse linear."""
    if _LONG_DIGITS.search(data):
        return "a run of digits longer than 64"
    pos = 0
    while pos < len(data):
        match = _PAX_RECORD.match(data, pos)
        end = pos + int(match.group(1)) if match else 0
        # The keyword's '=' inside the record (which also makes every record longer than nothing).
        if not match or match.end() > end or end > len(data) or data[end - 1:end] != b"\n":
            return "a malformed record"
        if match.group(2) == b"size" or match.group(2).startswith(b"GNU.sparse"):
            return f"a {match.group(2).decode()!r} record (files over 8 GiB and sparse files are not a project's)"
        pos = end
    return None


class _BoundedReader:
    """The decompressed tar stream as tarfile reads it, through a counter (a gzip bomb stops here, whatever the
    headers say) and an inspector of the stream's extended headers (pax, GNU long names), which are refused
    when too large or malformed before tarfile parses them (see :func:`_pax_well_formed`)."""

    def __init__(self, source: gzip.GzipFile, limit: int) -> None:
        self.source, self.limit, self.read_bytes = source, limit, 0
        self._pending = b""  # a header block, or a pax header's records, being collected
        self._skip = 0  # bytes of member data (and padding) before the next header
        self._collect = 0  # bytes of pax records to collect, then check
        self._done = False  # past the end-of-archive block, or a header tarfile will refuse itself

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size if size >= 0 else _CHUNK)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise _Oversize
        pos = 0
        while pos < len(data) and not self._done:
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip, pos = self._skip - step, pos + step
                continue
            want = self._collect or _BLOCK
            step = min(want - len(self._pending), len(data) - pos)
            self._pending, pos = self._pending + data[pos:pos + step], pos + step
            if len(self._pending) == want:
                self._complete()
        return data

    def _complete(self) -> None:
        block, self._pending = self._pending, b""
        if self._collect:
            why = _pax_well_formed(block)
            if why is not None:
                raise _BadHeader(f"a pax header with {why}")
            self._skip, self._collect = -len(block) % _BLOCK, 0
            return
        kind, field = block[156:157], block[124:136]
        try:
            size = int.from_bytes(field[1:], "big") if field[0] == 0x80 else \
                int(field.split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            size = -1
        if block == bytes(_BLOCK) or size < 0:
            self._done = True  # tarfile ends the archive here
        elif kind in (b"x", b"g", b"X", b"L", b"K") and size > _MAX_HEADER_BYTES:
            raise _BadHeader(f"an extended header of {size} bytes (at most {_MAX_HEADER_BYTES})")
        elif kind == b"S":
            raise _BadHeader("a GNU sparse member (sparse files are not a project's)")
        elif kind in (b"x", b"g", b"X") and size:
            self._collect = size
        else:
            self._skip = -(-size // _BLOCK) * _BLOCK


def _refuse(archive: Path, why: str) -> RequestRejected:
    return RequestRejected(f"archive {archive.name}: {why}; nothing was unpacked.", status=400)


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _check_member(archive: Path, root: str, member: tarfile.TarInfo) -> None:
    """Our own checks of one member, before anything of it is written (tarfile's "data" filter comes after)."""
    name = member.name
    parts = name.split("/")
    if not name or name.startswith("/") or ".." in parts:
        raise _refuse(archive, f"member {name!r} has an absolute path or a '..' component")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise _refuse(archive, f"member {name!r} is a device or fifo, not a file, directory or link")
    if not _inside(root, os.path.join(root, name)):
        raise _refuse(archive, f"member {name!r} would be written through a link outside the project")
    if member.issym():
        link = member.linkname
        if link.startswith("/") or not _inside(root, os.path.join(root, os.path.dirname(name), link)):
            raise _refuse(archive, f"member {name!r} is a symbolic link to {link!r}, outside the project")
    if member.islnk():
        link = member.linkname
        if link.startswith("/") or ".." in link.split("/") or not _inside(root, os.path.join(root, link)):
            raise _refuse(archive, f"member {name!r} is a hard link to {link!r}, outside the project")
        target = os.path.join(root, link)
        # tarfile would look an absent target up in the archive: backwards, which a stream cannot do.
        if os.path.islink(target) or not os.path.isfile(target):
            raise _refuse(archive, f"member {name!r} is a hard link to {link!r}, not a file before it")


def _extract(archive: Path, tmp: str, *, max_members: int, max_bytes: int) -> list[str]:
    """Extract into ``tmp`` (an empty directory), member by member; the symbolic links written."""
    links: list[str] = []
    total = 0
    bound = max_bytes + (max_members + 2) * _PER_MEMBER_OVERHEAD + 20 * _BLOCK
    # Stream mode: each header is read and checked before its data, and nothing is read twice.
    with gzip.GzipFile(archive, "rb") as gz, \
            tarfile.open(fileobj=_BoundedReader(gz, bound), mode="r|") as tar:  # type: ignore[call-overload]
        for count, member in enumerate(tar, start=1):
            if count > max_members:
                raise _refuse(archive, f"more than {max_members} members (at {member.name!r})")
            total += member.size if member.isfile() else 0
            if total > max_bytes:
                raise _refuse(archive, f"more than {_human(max_bytes)} unpacked (at {member.name!r})")
            _check_member(archive, tmp, member)
            try:
                tar.extract(member, tmp, filter="data")
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise _refuse(archive, f"member {member.name!r} conflicts with an earlier member") from None
            if member.issym():
                links.append(member.name)
    if not os.listdir(tmp):
        raise _refuse(archive, "it holds no files")
    return links


def unpack(archive: Path, dest: Path, *, max_members: int, max_bytes: int) -> None:
    """Unpack ``archive`` into ``dest`` (which must not exist yet), all of it or nothing. RequestRejected (400)
    naming the member for anything that is not a project's file; 400 "not a .tar.gz archive" for the rest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = os.path.realpath(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            links = _extract(archive, tmp, max_members=max_members, max_bytes=max_bytes)
        except _Oversize:
            raise _refuse(archive, f"more than {_human(max_bytes)} unpacked (a compressed bomb?)") from None
        except _BadHeader as error:
            raise _refuse(archive, str(error)) from None
        except tarfile.FilterError as error:
            raise _refuse(archive, str(error)) from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise _refuse(archive, f"not a .tar.gz archive ({error})") from None
        # A link checked while its target did not exist yet may leave the project once later members exist.
        for name in links:
            if not _inside(tmp, os.path.join(tmp, name)):
                raise _refuse(archive, f"member {name!r} is a symbolic link that leads outside the project")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["PackedArchive", "Receiver", "pack", "project_files", "receive", "receive_async", "stored", "unpack"]
