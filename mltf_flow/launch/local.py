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
import select
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
from mltf_flow.redaction import mask_text
from mltf_flow.secret_args import command_env, secret_values

_PR_SET_PDEATHSIG = 1
#: Seconds between looks at a process where no event tells us (no pidfd; members of a process group).
_POLL_S = 0.05

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
    (stderr marked ``!``) and, with ``echo_prefix``, to our stdout/stderr. ``should_stop`` is polled every
    second; when it says so the command is stopped; ``timeout`` seconds after the start it is stopped too
    (``timed_out``). On any exception while waiting (Ctrl-C, SIGTERM) the command is stopped and the
    exception re-raised. Stopping = SIGTERM to the session, SIGKILL after ``stop_grace`` seconds.

    When the command's first process ends (any exit code), the processes it left in its session (``cmd &``,
    a ``Popen`` never waited for) are ended the same way: a step leaves nothing running. A process that
    left the session (``setsid``, a daemon) is not seen; see docs/pipelines.md.

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
        deadline = None if timeout is None else time.monotonic() + timeout
        leader = _Leader(proc)
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
        timed_out = stop = False
        try:
            while not leader.wait(_slice(deadline, should_stop)):
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = stop = True
                    with lock:
                        log.write(f"# mltf_flow: timeout: still running after {timeout:g} s, stopping its "
                                  "processes\n")
                    break
                if should_stop is not None and should_stop():
                    stop = True
                    break
            _end_session(proc, leader, stop_grace, stop=stop)
        except BaseException:
            _end_session(proc, leader, stop_grace, stop=True)
            raise
        finally:
            leader.close()
            for thread, stream in zip(threads, (proc.stdout, proc.stderr), strict=True):
                # A process that left the session may hold the pipe open: stop waiting for its output then.
                thread.join(timeout=10)
                if not thread.is_alive():
                    stream.close()
    assert proc.returncode is not None  # reaped by _end_session
    return Ended(proc.returncode, list(tail), timed_out)


def _slice(deadline: float | None, should_stop: Callable[[], bool] | None) -> float | None:
    """How long to wait for the command before looking at the deadline or ``should_stop`` again."""
    waits = [1.0] if should_stop is not None else []
    if deadline is not None:
        waits.append(max(deadline - time.monotonic(), 0.0))
    return min(waits) if waits else None


class _Leader:
    """The command's first process (its session and process group id), watched *without reaping it*:
    until it is reaped its pid cannot be reused, so signalling its group never reaches a stranger, even
    after it exited and while what it left behind is ended. A pidfd makes the wait an event (Linux 5.3+);
    older kernels poll."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.pid = proc.pid
        self.fd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self.fd = os.pidfd_open(proc.pid)

    def exited(self) -> bool:
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
        except ChildProcessError:  # reaped already
            return True

    def wait(self, seconds: float | None) -> bool:
        """True once the process has exited; False when ``seconds`` passed first (None: no limit)."""
        end = None if seconds is None else time.monotonic() + seconds
        while not self.exited():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            if self.fd is not None:
                select.select([self.fd], [], [], left)
            else:
                time.sleep(_POLL_S if left is None else min(left, _POLL_S))
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` except its leader (from /proc: Linux)."""
    found = []
    with contextlib.suppress(OSError):
        entries = list(os.scandir("/proc"))
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) == pgid:
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:  # ended meanwhile
                continue
            # After "(comm)": state, ppid, pgrp, ... (comm may hold spaces and parentheses: split after the last).
            state, _, pgrp = stat[stat.rindex(b")") + 2 :].split()[:3]
            if int(pgrp) == pgid and state not in (b"Z", b"X"):
                found.append(int(entry.name))
    return found


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _end_session(proc: subprocess.Popen[bytes], leader: _Leader, grace: float, *, stop: bool) -> None:
    """End the command's process group, then reap its leader. ``stop``: the leader runs and is stopped too;
    else it exited and only what it left behind is ended. SIGTERM, then SIGKILL after ``grace`` seconds for
    whatever still lives; the unreaped leader keeps the group id ours until the end (see :class:`_Leader`)."""
    try:
        if stop or _group_members(proc.pid):
            _signal_group(proc.pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while not (leader.exited() and not _group_members(proc.pid)):
                left = end - time.monotonic()
                if left <= 0:
                    _signal_group(proc.pid, signal.SIGKILL)
                    break
                if not leader.wait(min(left, _POLL_S)):
                    continue
                time.sleep(min(left, _POLL_S))  # the leader is gone; its group is not yet
    finally:
        if not leader.exited():  # interrupted (a second Ctrl-C or SIGTERM): no more grace
            _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_session(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop the command's whole session (SIGTERM, then SIGKILL after ``grace`` seconds) and reap it."""
    leader = _Leader(proc)
    try:
        _end_session(proc, leader, grace, stop=True)
    finally:
        leader.close()


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
                echo_prefix=f"[{request.step}] ",
                on_start=request.on_start,
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
