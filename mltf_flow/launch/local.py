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
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO

from mltf_flow.launch.base import LaunchRequest, LaunchResult
from mltf_flow.redaction import mask_text
from mltf_flow.secret_args import command_env, secret_values

_PR_SET_PDEATHSIG = 1

__all__ = ["LocalLauncher", "Stopped", "die_with_parent", "run_streaming", "stop_session"]


def die_with_parent() -> None:
    """Have this process get SIGTERM when its parent dies, even by SIGKILL (``PR_SET_PDEATHSIG``): used as
    ``preexec_fn`` for commands, and by the cluster keeper for itself."""
    # Not glibc/Linux: OSError, and the session kill in stop_session still covers orderly stops.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Stopped(BaseException):
    """A stop signal arrived while a command ran: raised by a signal handler, caught where the command's
    outcome is decided (the job wrapper, an srun task). A BaseException, so no ``except Exception`` on
    the way swallows it as an ordinary error; control flow, hence not in :mod:`mltf_flow.errors`."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        super().__init__(message or f"signal {signum}")
        self.signum = signum


class _Terminated(Stopped):
    """SIGTERM arrived while the local launcher ran a step's command (the step run ends KILLED). Its
    name appears in the ``mltf.error`` tags of such runs: it is kept."""


def run_streaming(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    display: str,
    tail_lines: int,
    echo_prefix: str | None,
    on_start: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    stop_grace: float = 10.0,
) -> tuple[int, list[str]]:
    """Run ``command`` under ``bash -c`` in its own session; every output line goes to ``log_path``
    (stderr marked ``!``) and, with ``echo_prefix``, to our stdout/stderr. Returns (exit code, stderr
    tail). ``should_stop`` is polled every second; when it says so the command is stopped. On any
    exception while waiting (Ctrl-C, SIGTERM) the command is stopped (SIGTERM, then SIGKILL after
    ``stop_grace`` seconds) and the exception re-raised.

    Secret values in ``env`` (``MLTF_SECRET_*``, see :mod:`mltf_flow.secret_args`) reach a Python command's
    ``sys.argv`` through the argv hook, never any argv; they and URL credentials are masked in every line
    logged, echoed or kept."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = command_env(env)
    secrets = secret_values(env)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    lock = threading.Lock()
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"$ {mask_text(display, secrets)}\n")
        log.flush()
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        if on_start is not None:
            on_start(proc.pid)

        def pump(stream: IO[bytes], echo: IO[str], is_err: bool) -> None:
            for raw in iter(stream.readline, b""):
                line = mask_text(raw.decode("utf-8", errors="replace").rstrip("\n"), secrets)
                with lock:
                    log.write(("! " if is_err else "  ") + line + "\n")
                    log.flush()
                    if is_err:
                        tail.append(line)
                if echo_prefix is not None:
                    echo.write(echo_prefix + line + "\n")
                    echo.flush()

        assert proc.stdout is not None and proc.stderr is not None
        threads = [
            threading.Thread(target=pump, args=(proc.stdout, sys.stdout, False), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, sys.stderr, True), daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            while True:
                try:
                    code = proc.wait(timeout=1.0 if should_stop else None)
                    break
                except subprocess.TimeoutExpired:
                    if should_stop is not None and should_stop():
                        stop_session(proc, stop_grace)
        except BaseException:
            stop_session(proc, stop_grace)
            raise
        finally:
            for thread in threads:
                thread.join(timeout=10)
    return code, list(tail)


def stop_session(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
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


class LocalLauncher:
    """The command runs on this machine (with ``DASK_SCHEDULER_ADDRESS`` when the step has a cluster)."""

    name = "local"

    def launch(self, request: LaunchRequest) -> LaunchResult:
        start = time.monotonic()
        previous = self._trap_sigterm()
        try:
            code, tail = run_streaming(
                request.command,
                cwd=request.cwd,
                env=request.env,
                log_path=request.log_path,
                display=request.display_command or request.command,
                tail_lines=request.stderr_tail_lines,
                echo_prefix=f"[{request.step}] ",
                on_start=request.on_start,
            )
        finally:
            self._restore(previous)
        return LaunchResult(code, tail, request.log_path, time.monotonic() - start)

    @staticmethod
    def _trap_sigterm() -> Callable[[int, FrameType | None], object] | int | None:
        # Only the main thread may install handlers; elsewhere the default action applies and
        # PR_SET_PDEATHSIG stops the command when this process dies.
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: FrameType | None) -> None:
            raise _Terminated(signum, f"received signal {signum}")

        return signal.signal(signal.SIGTERM, handler)

    @staticmethod
    def _restore(previous: Callable[[int, FrameType | None], object] | int | None) -> None:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
