"""Run a step's command as a local subprocess, streaming its output to the console and a log file.

The command runs under ``bash -c`` in the project directory, as MLflow's local backend does, in its
own session (so it can be stopped with its children) and with ``PR_SET_PDEATHSIG`` so it dies with
the Luigi process even on SIGKILL. stdout and stderr are read by two threads; every line goes to the
log (stderr lines marked) and to our own stdout/stderr, and the last stderr lines are kept for the
error message.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import IO

from mltf_flow.launch.base import LaunchRequest, LaunchResult

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Not glibc/Linux: OSError, and the session kill in _stop still covers orderly stops.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Terminated(BaseException):
    """SIGTERM arrived while a command ran (BaseException: must not be swallowed as an error)."""


class LocalLauncher:
    """The embedded default: the command runs on this machine."""

    name = "local"

    def launch(self, request: LaunchRequest) -> LaunchResult:
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        tail: collections.deque[str] = collections.deque(maxlen=request.stderr_tail_lines)
        lock = threading.Lock()
        start = time.monotonic()
        with open(request.log_path, "a", encoding="utf-8", errors="replace") as log:
            log.write(f"$ {request.display_command or request.command}\n")
            log.flush()
            proc = subprocess.Popen(
                ["bash", "-c", request.command],
                cwd=request.cwd,
                env=dict(request.env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            if request.on_start is not None:
                request.on_start(proc.pid)
            prefix = f"[{request.step}] "

            def pump(stream: IO[bytes], echo: IO[str], is_err: bool) -> None:
                for raw in iter(stream.readline, b""):
                    line = raw.decode("utf-8", errors="replace").rstrip("\n")
                    with lock:
                        log.write(("! " if is_err else "  ") + line + "\n")
                        log.flush()
                        if is_err:
                            tail.append(line)
                    echo.write(prefix + line + "\n")
                    echo.flush()

            assert proc.stdout is not None and proc.stderr is not None
            threads = [
                threading.Thread(target=pump, args=(proc.stdout, sys.stdout, False), daemon=True),
                threading.Thread(target=pump, args=(proc.stderr, sys.stderr, True), daemon=True),
            ]
            for thread in threads:
                thread.start()
            previous = self._trap_sigterm()
            try:
                code = proc.wait()
            except BaseException:
                self._stop(proc)
                raise
            finally:
                self._restore(previous)
                for thread in threads:
                    thread.join(timeout=10)
        return LaunchResult(code, list(tail), request.log_path, time.monotonic() - start)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """Stop the command's whole session: SIGTERM, then SIGKILL after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    @staticmethod
    def _trap_sigterm() -> Callable[[int, FrameType | None], object] | int | None:
        # Only the main thread may install handlers; elsewhere the default action applies and
        # PR_SET_PDEATHSIG stops the command when this process dies.
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: FrameType | None) -> None:
            raise _Terminated(f"received signal {signum}")

        return signal.signal(signal.SIGTERM, handler)

    @staticmethod
    def _restore(previous: Callable[[int, FrameType | None], object] | int | None) -> None:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
