"""Leases: how a RUNNING run shows that its owner is alive (DESIGN.md, "Liveness").

The process that owns a run (the Luigi task process that opened a step run; for a pipeline's parent run,
every process of the invocation that runs a step) keeps tag ``mltf.lease_expires`` (Unix seconds) a lease
length ahead of now: the tag is written when the run is created and renewed from a daemon thread every
third of a lease (:class:`LeaseRenewer`). Another invocation judges a run by it (:func:`is_stale`):

* lease not expired: the owner is alive, on whatever host; an invocation that wants the same key waits
  for its result;
* lease expired (owner killed, its node gone, cut off from the tracking store for longer than a lease):
  stale, it is reaped (KILLED) and the step runs again;
* on the owner's own machine (same host name *and* boot id) the process itself answers: a pid that is
  gone (or reused: its start time differs) is stale at once, so the rerun of a pipeline killed here does
  not wait a lease out; a live one is alive even if its renewals fail (the store is down). An owner on
  another machine is judged by its lease only, never by a pid missing here.

A run without the tag (an older mltf_flow wrote it) counts from its start time. Hosts are expected to agree
on the time to well within a lease (NTP); the default lease (setting ``lease_seconds``) is 60 s.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mltf_flow.redaction import strip_credentials
from mltf_flow.tags import TAG_BOOT_ID, TAG_HOST, TAG_LEASE_EXPIRES, TAG_PID, TAG_PID_START

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from mltf_flow.tracking_rest import TrackingRest

_log = logging.getLogger(__name__)

__all__ = ["LeaseRenewer", "boot_id", "expires_at", "is_stale", "lease_tags", "process_alive", "process_identity",
           "renewer"]


def boot_id() -> str:
    """This machine's boot id: two machines (or two boots) with one host name tell apart by it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_identity(pid: int | None = None) -> dict[str, str]:
    """The owner tags of a process: host, boot id, pid and pid start time (which tells a reused pid apart)."""
    import psutil

    proc = psutil.Process(pid or os.getpid())
    return {TAG_HOST: socket.gethostname(), TAG_BOOT_ID: boot_id(), TAG_PID: str(proc.pid),
            TAG_PID_START: f"{proc.create_time():.2f}"}


def process_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the owner process named by a run's tags runs: True/False on this machine, None when it
    ran on another one (then only its lease tells)."""
    import psutil

    if tags.get(TAG_HOST, "") != socket.gethostname():
        return None
    if tags.get(TAG_BOOT_ID) and tags[TAG_BOOT_ID] != boot_id():
        return None  # a host name shared by two machines, or a run from before a reboot: the lease decides
    try:
        proc = psutil.Process(int(tags.get(TAG_PID, "0")))
        return f"{proc.create_time():.2f}" == tags.get(TAG_PID_START, "") and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return False


def lease_tags(lease_seconds: float, now: float | None = None) -> dict[str, str]:
    """The tag a new run is created with: its lease runs from now."""
    return {TAG_LEASE_EXPIRES: f"{(time.time() if now is None else now) + lease_seconds:.3f}"}


def expires_at(tags: Mapping[str, str], start_time_ms: int | None, lease_seconds: float) -> float:
    """When the run's lease ends (Unix seconds): its tag, or a lease after its start for an untagged run."""
    try:
        return float(tags[TAG_LEASE_EXPIRES])
    except (KeyError, ValueError):
        return (start_time_ms or 0) / 1000 + lease_seconds


def is_stale(tags: Mapping[str, str], start_time_ms: int | None, lease_seconds: float,
             now: float | None = None) -> bool:
    """Whether the owner of a run is gone (see the module docstring): a live owner on this machine is
    alive whatever its lease says (its renewals may be failing while the store is down)."""
    alive = process_alive(tags)
    if alive is not None:
        return not alive
    return (time.time() if now is None else now) > expires_at(tags, start_time_ms, lease_seconds)


class LeaseRenewer:
    """Renews the leases of the runs this process holds, from one daemon thread.

    ``hold``/``release`` count: a parent run held by two steps of one process stays leased until both are
    done. A tracking server that does not answer is said on the console once per outage (and when it is
    back: a step's own MLflow calls retry silently for minutes), and the renewal is tried at the next beat.
    """

    def __init__(self, tracking_uri: str, lease_seconds: float) -> None:
        self.tracking_uri = tracking_uri
        self.lease_seconds = lease_seconds
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: MlflowClient | None = None
        self._rest: TrackingRest | None = None

    def hold(self, *run_ids: str) -> None:
        if not self.tracking_uri.startswith(("http://", "https://")):
            self._client_once()  # mlflow is imported here, in the caller's thread, never in the beat's (see _renew)
        with self._lock:
            self._held.update(r for r in run_ids if r)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="mltf-lease", daemon=True)
                self._thread.start()

    def release(self, *run_ids: str) -> None:
        with self._lock:
            self._held.subtract(r for r in run_ids if r)
            self._held = +self._held  # drop counts at zero

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def _beat(self) -> None:
        down_since: float | None = None
        while not self._wake.wait(self.lease_seconds / 3):
            runs = self.held()
            if not runs:
                continue
            try:
                self._renew(runs)
            except Exception as exc:  # the store is down: keep beating, say so once per outage
                if down_since is None:
                    down_since = time.monotonic()
                    _log.warning(f"the tracking store {strip_credentials(self.tracking_uri)} does not answer ({exc}): "
                                 "the step goes on and MLflow's client in it keeps retrying; the lease of "
                                 f"MLflow run(s) {', '.join(runs)} is renewed again once it answers")
                continue
            if down_since is not None:
                _log.warning(f"the tracking store {strip_credentials(self.tracking_uri)} answers again (after "
                             f"{time.monotonic() - down_since:.0f} s)")
                down_since = None

    def _renew(self, runs: list[str]) -> None:
        if self.tracking_uri.startswith(("http://", "https://")):
            # MLflow's client would retry for minutes, silently: ask once, briefly, to be able to say it.
            from mltf_flow.tracking_rest import TrackingRest
            from mltf_flow.tracking_server import silence

            reason = silence(self.tracking_uri)
            if reason is not None:
                raise ConnectionError(reason)
            # Through MLflow's REST API, as its client would: this thread must not import mlflow while the main
            # thread may be importing it (two threads importing one package with import cycles, as mlflow's,
            # can see a partly initialised module: "cannot import name 'run' from partially initialized module").
            if self._rest is None:
                self._rest = TrackingRest(self.tracking_uri, max_retries=0, timeout=60)
            for run_id in runs:
                self._rest.set_tags(run_id, lease_tags(self.lease_seconds))
            return
        client = self._client_once()
        for run_id in runs:
            for name, value in lease_tags(self.lease_seconds).items():
                client.set_tag(run_id, name, value)

    def _client_once(self) -> MlflowClient:
        # A client of its own: MlflowClient objects are not documented as thread-safe.
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client


_RENEWERS: dict[tuple[int, str, float], LeaseRenewer] = {}


def renewer(tracking_uri: str, lease_seconds: float) -> LeaseRenewer:
    """This process's renewer for a store (a forked Luigi task process gets its own: threads do not fork)."""
    key = (os.getpid(), tracking_uri, lease_seconds)
    if key not in _RENEWERS:
        _RENEWERS[key] = LeaseRenewer(tracking_uri, lease_seconds)
    return _RENEWERS[key]
