"""Rucio's REST application, one request at a time under the database lock of dblock.py (see there why).
gunicorn serves `locked_app:application` with --pythonpath tests/infra/rucio and RUCIO_TEST_HOME=DIR."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dblock import DbLock
from rucio.web.rest.flaskapi.v1.main import application as rucio_application

LOCK = DbLock(os.environ["RUCIO_TEST_HOME"])


class _ReleaseOnClose:
    """The response body, whose generator may still query the database (streamed listings): the lock is
    released when the server closes it (PEP 3333), not when the application returns."""

    def __init__(self, body: Iterable[bytes]) -> None:
        self._body = body
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if not self._released:
                self._released = True
                LOCK.release()


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    LOCK.acquire()
    try:
        body = rucio_application(environ, start_response)
    except BaseException:
        LOCK.release()
        raise
    return _ReleaseOnClose(body)
