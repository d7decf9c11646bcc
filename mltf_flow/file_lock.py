"""Locks between the processes of one machine (Luigi workers forked per task, a study's driver and another
invocation's): a lock file under the work dir, held with ``flock`` for the length of a ``with`` block. Released
by the kernel when its process dies, so a killed invocation never leaves a lock behind."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes of this machine (e.g. Luigi workers forked per task)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = ["file_lock"]
