"""A step command's session: waiting for it, and ending it with everything it started.

The command is started in a session (and process group) of its own, its id the pid of its first process,
the *leader*. :class:`Leader` watches the leader without reaping it: until it is reaped, its pid cannot be
given to another process, so signalling the group id never reaches a stranger, even after the leader exited
while what it left behind is being ended. :func:`end_session` ends the group (SIGTERM, SIGKILL after a grace)
and only then reaps the leader; :func:`wait_session` waits for the leader, a deadline (the step's timeout) or
a stop request, then ends the group. What left the session (``setsid``, a daemon) is not seen here.
Linux: the group's members are found in ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable

#: Seconds between looks at a process where no event tells us (no pidfd; members of a process group).
_POLL_S = 0.05
#: How long SIGKILLed processes get to be gone (they cannot refuse; a loaded machine only delays it).
_KILLED_S = 10.0

__all__ = ["Leader", "end_session", "stop_session", "wait_session"]


def wait_session(proc: subprocess.Popen[bytes], leader: Leader, deadline: float | None,
                 should_stop: Callable[[], bool] | None, grace: float) -> bool:
    """Wait until the leader exits, ``deadline`` (``time.monotonic()``) passes or ``should_stop()`` (asked every
    second) says so; then end the session (:func:`end_session`) and reap the leader. True: the deadline passed."""
    timed_out = stop = False
    while not leader.wait(_slice(deadline, should_stop)):
        if deadline is not None and time.monotonic() >= deadline:
            timed_out = stop = True
            break
        if should_stop is not None and should_stop():
            stop = True
            break
    end_session(proc, leader, grace, stop=stop)
    return timed_out


def _slice(deadline: float | None, should_stop: Callable[[], bool] | None) -> float | None:
    """How long to wait for the command before looking at the deadline or ``should_stop`` again."""
    waits = [1.0] if should_stop is not None else []
    if deadline is not None:
        waits.append(max(deadline - time.monotonic(), 0.0))
    return min(waits) if waits else None


class Leader:
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


def _wait_gone(pgid: int, seconds: float) -> None:
    """Until SIGKILLed members have died: the kernel ends them when they next run, which on a loaded machine
    can be a while after the signal, and nothing of a step may outlive its end."""
    end = time.monotonic() + seconds
    while _group_members(pgid) and time.monotonic() < end:
        time.sleep(_POLL_S)


def end_session(proc: subprocess.Popen[bytes], leader: Leader, grace: float, *, stop: bool) -> None:
    """End the command's process group, then reap its leader. ``stop``: the leader runs and is stopped too;
    else it exited and only what it left behind is ended. SIGTERM, then SIGKILL after ``grace`` seconds for
    whatever still lives; the unreaped leader keeps the group id ours until the end (see :class:`Leader`)."""
    try:
        if stop or _group_members(proc.pid):
            _signal_group(proc.pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while not (leader.exited() and not _group_members(proc.pid)):
                left = end - time.monotonic()
                if left <= 0:
                    _signal_group(proc.pid, signal.SIGKILL)
                    _wait_gone(proc.pid, _KILLED_S)
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
    leader = Leader(proc)
    try:
        end_session(proc, leader, grace, stop=True)
    finally:
        leader.close()
