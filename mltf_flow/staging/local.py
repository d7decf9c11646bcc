"""Local staging: datasets already on a filesystem this machine sees (local disk or shared FS).

Nothing is copied: staging lists the files, checksums them and writes the manifest. A manifest stays
valid while the listing and every file's size and modification time are unchanged; a changed,
added or removed file makes it stale, so the dataset is staged again and its new digest reruns
everything downstream.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mltf_flow.errors import DatasetNotData, DatasetNotFound
from mltf_flow.staging.manifest import MANIFEST_VERSION, manifest_digest, sha256_file
from mltf_flow.staging.uri import DatasetURI


def list_files(uri: DatasetURI) -> list[tuple[str, Path]]:
    """(name relative to the dataset root, absolute path) of every file of a local dataset."""
    assert uri.path is not None
    root = uri.path
    if root.exists() and not root.is_dir() and uri.pattern is None:
        return [(root.name, _regular(uri, root))]
    if not root.is_dir():
        raise DatasetNotFound(
            f"dataset {uri.canonical}: {root} does not exist. Check the path, or create the sample data "
            "(make data)."
        )
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if uri.pattern and not fnmatch.fnmatch(name, uri.pattern):
                continue
            full = Path(dirpath) / name
            found.append((str(full.relative_to(root)), _regular(uri, full)))
    if not found:
        what = f"matching {uri.pattern!r} " if uri.pattern else ""
        raise DatasetNotFound(f"dataset {uri.canonical}: no files {what}under {root}.")
    return found


def _regular(uri: DatasetURI, path: Path) -> Path:
    """``path`` if it is a regular file (or a link to one). A FIFO, socket or device would block or never end
    when read for its checksum, so it is refused before anything is read."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise DatasetNotData(f"dataset {uri.canonical}: {path} cannot be read ({exc.strerror}); a broken link? "
                           "Remove it or fix its target.") from None
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise DatasetNotData(f"dataset {uri.canonical}: {path} is {kind}, not data. Move it out of the dataset "
                           "directory, or select the data files with a glob (dataset: DIR/*.root).")
    return path


#: ``progress(files_done, files_total, bytes_done, bytes_total)``, called before the first and after each file.
Progress = Callable[[int, int, int, int], None]


def stage_local(uri: DatasetURI, progress: Progress | None = None) -> dict[str, Any]:
    """Build the manifest of a local dataset (checksums every file)."""
    listed = [(name, path, path.stat()) for name, path in list_files(uri)]
    total = sum(st.st_size for _, _, st in listed)
    files: list[dict[str, Any]] = []
    done = 0
    for name, path, st in listed:
        if progress is not None:
            progress(len(files), len(listed), done, total)
        files.append(
            {"name": name, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "sha256": sha256_file(path)}
        )
        done += st.st_size
    if progress is not None:
        progress(len(files), len(listed), done, total)
    return {
        "version": MANIFEST_VERSION,
        "uri": uri.canonical,
        "scheme": uri.scheme,
        "files": files,
        "digest": manifest_digest(files),
    }


def still_valid(uri: DatasetURI, manifest: dict[str, Any]) -> bool:
    """True when the files on disk are the ones the manifest describes (cheap: stat only)."""
    try:
        current = list_files(uri)
    except DatasetNotFound:
        return False
    recorded = {f["name"]: f for f in manifest["files"]}
    if sorted(recorded) != sorted(name for name, _ in current):
        return False
    for name, path in current:
        try:
            stat = path.stat()
        except OSError:
            return False
        entry = recorded[name]
        if stat.st_size != entry["size"] or stat.st_mtime_ns != entry["mtime_ns"]:
            return False
    return True
