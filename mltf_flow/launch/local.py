"""Run a step's command as a local subprocess, streaming its output to the console and a log file.

The command runs under ``bash -c`` in the project directory, as MLflow's local backend does, in its
own session (so it can be stopped with its children, and what it leaves behind ended when it exits or
times out: :mod:`mltf_flow.launch.session`) and with ``PR_SET_PDEATHSIG`` so it dies with the Luigi
process even on SIGKILL. stdout and stderr are read by two threads; every line goes to the
log (stderr lines marked) and to our own stdout/stderr, and the last stderr lines are kept for the
error message.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

from mltf_flow.launch.base import LaunchRequest, LaunchResult
from mltf_flow.launch.session import Leader, end_session, stop_session, wait_session
from mltf_flow.redaction import mask_text
from mltf_flow.secret_args import command_env, secret_values

_PR_SET_PDEATHSIG = 1

__all__ = ["Ended", "LocalLauncher", "Stopped", "die_with_parent", "run_streaming", "stop_session"]


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


@dataclass(frozen=True)
class Ended:
    """How a command run by :func:`run_streaming` ended. ``exit_code`` < 0: killed by that signal."""

    exit_code: int
    #: The last stderr lines (secrets masked).
    tail: list[str]
    #: It ran past its ``timeout`` and was stopped (with every process of its session).
    timed_out: bool = False


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
    timeout: float | None = None,
) -> Ended:
    """Run ``command`` under ``bash -c`` in its own session; every output line goes to ``log_path``
    (stderr marked ``!``) and, with ``echo_prefix``, to our stdout/stderr. The command is stopped (SIGTERM
    to its session, SIGKILL after ``stop_grace`` s) when ``should_stop()`` (asked every second) says so,
    ``timeout`` s after its start (``timed_out``), or on any exception while waiting (Ctrl-C, SIGTERM; then
    re-raised). When it exits, what it left in its session (``cmd &``, a ``Popen`` never waited for) is
    ended the same way (:mod:`mltf_flow.launch.session`). Secret values in ``env`` (``MLTF_SECRET_*``,
    :mod:`mltf_flow.secret_args`) reach a Python command's ``sys.argv`` through the argv hook, never any
    argv; they and URL credentials are masked in every line logged, echoed or kept."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = command_env(env)
    secrets = secret_values(env)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    lock = threading.Lock()
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"$ {mask_text(display, secrets)}\n")
        log.flush()
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)
        deadline = None if timeout is None else time.monotonic() + timeout
        leader = Leader(proc)
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
            if timed_out := wait_session(proc, leader, deadline, should_stop, stop_grace):
                with lock:
                    log.write(f"# mltf_flow: timeout: still running after {timeout:g} s; stopped\n")
        except BaseException:
            end_session(proc, leader, stop_grace, stop=True)
            raise
        finally:
            leader.close()
            for thread, stream in zip(threads, (proc.stdout, proc.stderr), strict=True):
                # A process that left the session may hold the pipe open: stop waiting for its output then.
                thread.join(timeout=10)
                if not thread.is_alive():
                    stream.close()
    assert proc.returncode is not None  # reaped by wait_session / end_session
    return Ended(proc.returncode, list(tail), timed_out)


class LocalLauncher:
    """The command runs on this machine (with ``DASK_SCHEDULER_ADDRESS`` when the step has a cluster)."""

    name = "local"

    def launch(self, request: LaunchRequest) -> LaunchResult:
        start = time.monotonic()
        previous = self._trap_sigterm()
        try:
            ended = run_streaming(
                request.command,
                cwd=request.cwd,
                env=request.env,
                log_path=request.log_path,
                display=request.display_command or request.command,
                tail_lines=request.stderr_tail_lines,
                echo_prefix=f"[{request.step}] " if request.echo else None,
                on_start=request.on_start,
                should_stop=request.should_stop,
                timeout=request.timeout.seconds if request.timeout else None,
            )
        finally:
            self._restore(previous)
        return LaunchResult(ended.exit_code, ended.tail, request.log_path, time.monotonic() - start,
                            timed_out=ended.timed_out)

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
