"""The worker slots of a study: which workers run which trial's command, one trial at a time on each.

A slot is a group of workers of the trial's world size (one worker for a ``worker`` step; none for a ``driver``
step, whose commands run in the driver: its slots only bound how many run at once). A trial holds a slot while
its command runs, not while it does its bookkeeping: a trial's claim and run creation before its command, and
its log, metric and settling after it, are a dozen tracking requests, as long as a short command, and they
overlap other trials' commands (the study has :data:`SPARE_TRIALS` more trials in flight than slots).
On a cluster of SLURM jobs a trial takes its slot before its run is created: its run names its own workers' jobs.

A slot whose workers left the cluster (their SLURM job ended) is dropped, and the idle workers still there are
grouped into new slots; when no worker is left and no trial holds a slot, :class:`WorkersGone` ends the study.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mltf_flow.errors import MltfFlowError, StepError

_log = logging.getLogger(__name__)

#: Trials in flight beyond the slots: while every slot runs a command, one trial does its bookkeeping before
#: its command and one after (measured, 2 slots: +0 27-30 s, +1 24-27 s, +2 19 s for 80 short trials). Not
#: more: a trial asked early is sampled without the results of the trials before it.
SPARE_TRIALS = 2

Slot = tuple[str, ...] | None


class WorkersGone(StepError):
    """No slot can be had: every worker of the cluster is gone and no trial holds one."""


class SlotsClosed(MltfFlowError):
    """The study is stopping: a trial waiting for a slot runs no command."""


class WorkerSlots:
    """Hands out slots to trial threads (:meth:`take` waits until one is free)."""

    def __init__(self, slots: list[Slot], *, client: Any, world_size: int, study: str, step: str,
                 stopping: threading.Event) -> None:
        self.size = len(slots)
        self._free: list[Slot] = list(slots)
        self._busy: list[Slot] = []
        self._client, self._world_size, self._study, self._step = client, world_size, study, step
        self._stopping = stopping
        self._changed = threading.Condition()

    def take(self) -> Slot:
        """A free slot whose workers are all still there (waits for one)."""
        with self._changed:
            while True:
                if self._stopping.is_set():
                    raise SlotsClosed(f"study {self._study} is stopping")
                found, slot = self.live_slot()
                if found:
                    self._busy.append(slot)
                    return slot
                if not self._busy:
                    raise WorkersGone(f"study {self._study}: the workers of its cluster are gone (SLURM jobs ended?). "
                                      "Run the same command again to go on.", step=self._step)
                # Woken by give() or close(); the timeout only bounds a missed stop (the event has no condition).
                self._changed.wait(timeout=1.0)

    def give(self, slot: Slot) -> None:
        """A trial's command ended: its slot is free for the next trial."""
        with self._changed:
            self._busy.remove(slot)
            self._free.append(slot)
            self._changed.notify()

    def close(self) -> None:
        """The study stops: every trial waiting in :meth:`take` gives up (:class:`SlotsClosed`)."""
        with self._changed:
            self._changed.notify_all()

    def live_slot(self) -> tuple[bool, Slot]:
        """(True, a free slot whose workers are all still there), or (False, None) when there is none. A slot
        whose workers left is dropped, and the idle live workers are grouped anew (called under the lock)."""
        free = self._free
        if free and free[0] is None:
            return True, free.pop(0)  # a driver step's slot: no workers to check
        if not free:
            return False, None
        alive = set(self._client.scheduler_info(n_workers=-1).get("workers", {}))
        while free:
            slot = free.pop(0)
            if slot is not None and set(slot) <= alive:
                return True, slot
            _log.warning(f"study {self._study}: worker(s) {', '.join(slot or ())} left the cluster")
            taken = {w for group in [*self._busy, *free] for w in (group or ())}
            idle = sorted(alive - taken)
            size = self._world_size
            free.extend(tuple(idle[i : i + size]) for i in range(0, len(idle) - size + 1, size))
        return False, None


class SlotHold:
    """One trial's hold on a slot: taken at once (``early``: on SLURM, before the trial's run names its workers'
    jobs) or for its command only; given back once, when the command ends or the trial does."""

    def __init__(self, slots: WorkerSlots, *, early: bool) -> None:
        self.slots = slots
        self.slot: Slot = slots.take() if early else None
        self.taken = early

    @contextmanager
    def command(self) -> Iterator[Slot]:
        """The slot while the command runs."""
        if not self.taken:
            self.slot = self.slots.take()
            self.taken = True
        try:
            yield self.slot
        finally:
            self.release()

    def release(self) -> None:
        if self.taken:
            self.taken = False
            self.slots.give(self.slot)


def worker_groups(client: Any, *, world_size: int, n_jobs: int | None, step: str) -> list[Slot]:
    """The slots of a ``worker`` step's study: groups of ``world_size`` of the cluster's workers, ``n_jobs`` of
    them (all without it)."""
    workers = sorted(client.scheduler_info(n_workers=-1).get("workers", {}))
    groups = [tuple(workers[i : i + world_size]) for i in range(0, len(workers) - world_size + 1, world_size)]
    if not groups:
        raise StepError(f"study of step {step!r}: a trial needs {world_size} worker(s), the cluster has "
                        f"{len(workers)}.", step=step)
    slots: list[Slot] = list(groups[: n_jobs or len(groups)])
    return slots


__all__ = ["SPARE_TRIALS", "Slot", "SlotHold", "SlotsClosed", "WorkerSlots", "WorkersGone", "worker_groups"]
