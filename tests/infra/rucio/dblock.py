"""One lock around all database work of the test server and the test daemons (DIR/db.lock).

SQLite has a single writer, and between two processes (gunicorn and daemons.py) it does not always wait: with
the daemons running, about half of the client calls that write (add_replicas, attach_dids) failed at once with
`database is locked` (HTTP 500 'An unknown Database Exception has occurred'), in rollback-journal and WAL mode
alike, because SQLite's deadlock avoidance skips the busy timeout. So the server handles one request at a time
under this lock (locked_app.py) and the daemons take it around each daemon call (daemons.py): they take turns.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


class DbLock:
    """Exclusive between the threads of this process (threading.Lock) and between processes (flock)."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.path = Path(home) / "db.lock"
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._fd is None:  # opened lazily: gunicorn forks its worker after importing the app
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def __enter__(self) -> DbLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
