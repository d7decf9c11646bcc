"""One Dask cluster per profile per pipeline invocation: who starts it, who may use it, who stops it.

* The process that runs Luigi (the *main* process: the one that built the DAG) owns the clusters. It
  creates a profile's cluster lazily, when a step that needs the profile turns out to be incomplete
  (so also before Luigi forks per-task workers for ``--workers N``), and exports the scheduler address in
  ``MLTF_DASK_ADDRESS__<PROFILE>``. The cluster itself lives in a keeper process
  (:mod:`mltf_flow.clusters.keeper`), which pre-flights SLURM jobs with ``sbatch --test-only``: the main
  process holds no Dask threads, so forking it for task processes is safe.
* Every process (the main one, or a forked task process) talks to a cluster through its own
  ``Client(address)``: a Client inherited across ``fork`` hangs forever.
* The main process closes every cluster (SLURM jobs are cancelled) at exit: success, failure, Ctrl-C,
  and SIGTERM (turned into an orderly exit).
* Every cluster we start speaks TLS with credentials of its own (:mod:`mltf_flow.clusters.security`):
  the keeper makes them and exports nothing but their directory, in ``MLTF_DASK_SECURITY__<PROFILE>``;
  :func:`credentials` finds them for this process's clients and the step's command.
* A profile with ``scheduler_address`` attaches to an existing scheduler and never starts or stops it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from mltf_flow import phases
from mltf_flow.clusters.profiles import Profile, SlurmProfile
from mltf_flow.clusters.security import Credentials, from_directory
from mltf_flow.errors import ClusterError, ConfigError, SlurmRejected, WorkersTimeout

_log = logging.getLogger(__name__)

MAIN_PID_ENV = "MLTF_MAIN_PID"
_ADDRESS_ENV = "MLTF_DASK_ADDRESS__"
_DASHBOARD_ENV = "MLTF_DASK_DASHBOARD__"
_SECURITY_ENV = "MLTF_DASK_SECURITY__"
_lock = threading.RLock()


def mark_main_process() -> None:
    """Remember the DAG-building process. Task processes that Luigi forks from it inherit the variable
    and stay non-main; any other process (one started with exec, e.g. a step command that itself runs
    a pipeline) becomes the main process of its own invocation."""
    import multiprocessing

    current = os.environ.get(MAIN_PID_ENV)
    if current == str(os.getpid()):
        return
    parent = multiprocessing.parent_process()
    if current and parent is not None and str(parent.pid) == current:
        return  # a task process forked by the main process
    os.environ[MAIN_PID_ENV] = str(os.getpid())


def is_main_process() -> bool:
    return os.environ.get(MAIN_PID_ENV) == str(os.getpid())


def _env_name(prefix: str, profile: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9]", "_", profile).upper()


@dataclass
class _Owned:
    profile: Profile
    address: str
    dashboard: str
    scaled: bool = False


class _Keeper:
    """The keeper process of this invocation (see :mod:`mltf_flow.clusters.keeper`)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mltf_flow.clusters.keeper", os.getcwd()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        answer = self.proc.stdout.readline()
        if not answer:
            raise ClusterError(f"the cluster keeper process died (exit code {self.proc.wait()}); see its "
                               "messages above.")
        reply: dict[str, Any] = json.loads(answer)
        return reply

    def ask(self, cmd: str, profile: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, "profile": profile}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply.get("ok"):
            errors: dict[str, type[Exception]] = {"SlurmRejected": SlurmRejected, "ConfigError": ConfigError}
            raise errors.get(str(reply.get("error")), ClusterError)(str(reply.get("message")))
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # EOF: the keeper closes its clusters and exits
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _log.warning("the cluster keeper did not stop; terminating it")
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # our end of the answers pipe (left open, it leaks a descriptor per cluster)


class _Registry:
    """Clusters owned by this (main) process, each held by a keeper process."""

    def __init__(self) -> None:
        self.owned: dict[str, _Owned] = {}
        self.keeper: _Keeper | None = None
        self.hooks_installed = False

    def install_hooks(self) -> None:
        if self.hooks_installed:
            return
        self.hooks_installed = True
        atexit.register(close_all)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL,
            None,
        ):

            def on_term(signum: int, frame: FrameType | None) -> None:
                # An orderly exit runs atexit (close_all): SLURM jobs are cancelled, not orphaned.
                raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, on_term)


_REGISTRY = _Registry()
_CLIENTS: dict[tuple[int, str], Any] = {}


def _start(profile: Profile) -> _Owned:
    """Have the keeper start the profile's cluster (or report SLURM's rejection)."""
    if _REGISTRY.keeper is None:
        _REGISTRY.keeper = _Keeper()
    reply = _REGISTRY.keeper.ask("start", profile.name)
    owned = _Owned(profile, str(reply["address"]), str(reply["dashboard"]))
    os.environ[_env_name(_ADDRESS_ENV, profile.name)] = owned.address
    os.environ[_env_name(_DASHBOARD_ENV, profile.name)] = owned.dashboard
    os.environ[_env_name(_SECURITY_ENV, profile.name)] = str(reply["security"])
    _log.info(f"Dask cluster for profile {profile.name!r} ({profile.kind}) at {owned.address}; "
              f"dashboard: {owned.dashboard or 'disabled'}{_moved(profile, owned.dashboard)}")
    phases.reached(phases.CLUSTER_STARTED)
    return owned


def _moved(profile: Profile, dashboard: str) -> str:
    """`` (port 8787 was in use)`` when Dask put the dashboard elsewhere than the profile asks (Dask's own
    warning about it is not shown: see :mod:`mltf_flow.clusters.keeper`)."""
    wanted = (profile.dashboard_address or "").rpartition(":")[2]
    got = urlsplit(dashboard).port if dashboard else None
    if wanted.isdigit() and int(wanted) != 0 and got is not None and got != int(wanted):
        return f" (port {wanted} was in use)"
    return ""


def prepare(profile: Profile, *, scale: bool) -> None:
    """Main process: make sure the profile's cluster exists (and, with ``scale``, that its jobs are
    requested). Raises :class:`~mltf_flow.errors.SlurmRejected` if SLURM would reject the jobs."""
    if profile.scheduler_address or not is_main_process():
        return
    with _lock:
        _REGISTRY.install_hooks()
        owned = _REGISTRY.owned.get(profile.name)
        if owned is None:
            owned = _REGISTRY.owned[profile.name] = _start(profile)
        if scale and not owned.scaled:
            assert _REGISTRY.keeper is not None
            _REGISTRY.keeper.ask("scale", profile.name)
            owned.scaled = True


def address(profile: Profile) -> str:
    """The scheduler address for ``profile`` in this process (starting the cluster if we own it)."""
    if profile.scheduler_address:
        return profile.scheduler_address
    if is_main_process():
        prepare(profile, scale=True)
    found = os.environ.get(_env_name(_ADDRESS_ENV, profile.name))
    if not found:
        raise ClusterError(
            f"no Dask cluster for profile {profile.name!r} in this process (pid {os.getpid()}): clusters are "
            "started by the process that runs Luigi. Run the pipeline through `luigi`/`mltf-flow run`, or set "
            "scheduler_address in the profile to attach to a running scheduler."
        )
    return found


def dashboard_link(profile: Profile) -> str:
    return os.environ.get(_env_name(_DASHBOARD_ENV, profile.name), "")


def credentials(profile: Profile) -> Credentials | None:
    """The TLS credentials of the cluster we started for ``profile`` (None when attached to a scheduler
    of someone else's: dask's own configuration says how to reach that one)."""
    if profile.scheduler_address:
        return None
    found = os.environ.get(_env_name(_SECURITY_ENV, profile.name))
    return from_directory(found) if found else None


def client_for(profile: Profile) -> Any:
    """This process's Client of ``profile``'s cluster, with the cluster's TLS credentials."""
    addr = address(profile)  # first: it starts the cluster (and makes its credentials) in the main process
    found = credentials(profile)
    return get_client(addr, found.security() if found is not None else None)


def get_client(addr: str, security: Any = None) -> Any:
    """A Client for this process (never one inherited across fork: that one hangs). ``security``: a
    ``distributed.security.Security`` (see :func:`credentials`); None takes dask's configuration."""
    from distributed import Client

    slot = (os.getpid(), addr)
    with _lock:
        client = _CLIENTS.get(slot)
        if client is None or client.status != "running":
            client = Client(addr, set_as_default=False, timeout="60s", security=security)
            _CLIENTS[slot] = client
        return client


def wait_for_workers(client: Any, profile: Profile) -> None:
    """Block until the profile's workers are connected, or fail with what SLURM says. A wait longer than a
    moment shows what the jobs are waiting for (``squeue``'s reason) on the console."""
    from mltf_flow.progress import ConsoleStatus

    wanted, started = profile.expected_workers, time.monotonic()
    deadline = started + profile.worker_start_timeout
    with ConsoleStatus() as line:
        while True:
            try:
                # Short waits: between them the console says why the workers are not there yet.
                client.wait_for_workers(wanted, timeout=max(0.1, min(_WAIT_CHUNK, deadline - time.monotonic())))
            except (TimeoutError, OSError) as exc:
                got = len(client.scheduler_info(n_workers=-1).get("workers", {}))
                if time.monotonic() < deadline:
                    line.update(_waiting(profile, got, wanted))
                    continue
                hint = "check `squeue --me` (pending? why?) and the job logs under <work_dir>/slurm-logs" \
                    if isinstance(profile, SlurmProfile) else "check memory and the worker logs"
                raise WorkersTimeout(
                    f"profile {profile.name!r}: only {got} of {wanted} Dask workers arrived within "
                    f"{profile.worker_start_timeout:.0f} s; {hint}. Last seen: {_waiting(profile, got, wanted)}"
                ) from exc
            if line.shown:
                line.final(f"{wanted} Dask worker(s) of profile {profile.name!r} connected after "
                           f"{time.monotonic() - started:.0f} s")
            return


#: Seconds between two looks at why workers have not arrived (``squeue``, at most one call per look).
_WAIT_CHUNK = 3.0


def _waiting(profile: Profile, got: int, wanted: int) -> str:
    """``waiting for 2 SLURM workers of profile 'slurm-ci' (0 connected): job 123 PENDING (Resources)``."""
    kind = "SLURM" if isinstance(profile, SlurmProfile) else "Dask"
    text = f"waiting for {wanted - got} {kind} worker(s) of profile {profile.name!r} ({got} of {wanted} connected)"
    jobs = _job_states(profile) if isinstance(profile, SlurmProfile) else []
    return text + (": " + ", ".join(jobs) if jobs else "")


def _job_states(profile: Profile) -> list[str]:
    """``job 123 PENDING (Resources)`` for each worker job of the profile's cluster (those the keeper of this
    process submitted; a forked task process has no keeper to ask, and shows none)."""
    from mltf_flow.errors import MltfFlowError
    from mltf_flow.slurm.query import describe_jobs

    keeper = _REGISTRY.keeper
    if keeper is None or profile.name not in _REGISTRY.owned or not is_main_process():
        return []
    try:
        with _lock:
            ids = [str(j) for j in keeper.ask("jobs", profile.name).get("jobs", [])]
        return describe_jobs(ids)
    except (MltfFlowError, OSError, subprocess.SubprocessError):
        return []  # progress only: the wait itself decides


def worker_job_ids(client: Any, workers: Sequence[str] | None = None) -> list[str]:
    """SLURM job ids of the connected workers, or of ``workers`` (addresses) only: read from each worker's
    environment; a worker that does not answer (it left) is left out."""

    def job_id() -> str:
        return os.environ.get("SLURM_JOB_ID", "")

    found = client.run(job_id, workers=None if workers is None else list(workers),
                       on_error="raise" if workers is None else "ignore")
    ids = {v for v in found.values() if isinstance(v, str) and v}
    return sorted(ids, key=lambda j: (len(j), j))


def close_all() -> None:
    """Close every cluster this process owns (their SLURM jobs are cancelled). Idempotent."""
    if not is_main_process():
        return
    with _lock:
        owned, _REGISTRY.owned = _REGISTRY.owned, {}
        for slot, client in list(_CLIENTS.items()):
            if slot[0] == os.getpid():
                with contextlib.suppress(Exception):  # best effort; the clusters below matter
                    client.close(timeout=5)
        _CLIENTS.clear()
        keeper, _REGISTRY.keeper = _REGISTRY.keeper, None
        if keeper is not None:
            keeper.close()
        for entry in owned.values():
            os.environ.pop(_env_name(_ADDRESS_ENV, entry.profile.name), None)
            os.environ.pop(_env_name(_DASHBOARD_ENV, entry.profile.name), None)
            os.environ.pop(_env_name(_SECURITY_ENV, entry.profile.name), None)
