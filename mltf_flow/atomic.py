"""Atomic file writes: a reader (another job, a later run, a crashed writer's successor) never sees half a file.

The text goes to a temporary file in the target's directory, is flushed to disk, and replaces the target
with ``os.replace`` (atomic on POSIX filesystems, NFS included, within one directory).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """``data`` as JSON (sorted keys, one-space indent), written atomically. Configuration models (a
    profile's fabric section in a job's spec) are written as the mapping that validates back to them."""
    return write_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=_jsonable))


def _jsonable(value: Any) -> Any:
    from mltf_flow.config.schema import Schema, dump

    if isinstance(value, Schema):
        return dump(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
