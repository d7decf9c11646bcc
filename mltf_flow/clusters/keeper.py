"""The cluster keeper: a small process that owns the Dask clusters of one pipeline invocation.

Why a process: dask's SLURMCluster/LocalCluster run an event loop in a thread of whoever creates them.
Luigi forks a process per task for ``--workers N``; forking a process that has such threads can copy
locks held mid-operation and hang the child. So the process that runs Luigi holds no Dask threads: it
starts ``python -m mltf_flow.clusters.keeper PROFILE`` and talks to it over pipes (one JSON line per
message). The keeper dies with its parent (``PR_SET_PDEATHSIG``) and closes the cluster (cancelling
SLURM jobs) on EOF, SIGTERM or its parent's death.

Each cluster gets TLS credentials of its own (:mod:`mltf_flow.clusters.security`), made when it starts
and removed when it closes; the keeper tells its parent where they are (a directory, never the keys).

Protocol: the keeper answers its start with ``{"ok": true, "address", "dashboard", "security"}`` or
``{"ok": false, "error": CLASS, "message"}``; then reads commands (``scale``; ``jobs``: the SLURM job ids
of the workers), one per line, answering each with one JSON line; EOF on stdin means: close and exit.

The keeper's stderr is the user's console: Dask's "Port 8787 is already in use" warning is not shown (the
parent's line about the cluster names the port the dashboard got instead), and closing the clusters after
Luigi's summary says nothing below ERROR (nannies killing workers that take long to stop is how a
cluster closes, not news).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO, Any

from mltf_flow.clusters.dashboard import enabled as dashboard_enabled
from mltf_flow.clusters.security import Credentials, create
from mltf_flow.launch.local import die_with_parent

#: Seconds between looks at whether a scaled cluster lost worker jobs; and Dask's wait before it drops one.
KEEP_SIZE_INTERVAL_S = 2.0
LOST_WORKER_S = 3


def _gds_environment(profile: Any, work_dir: Path) -> None:
    """LocalCluster workers inherit our environment: give them the profile's cufile.json (and scratch)."""
    from mltf_flow.fabric.gds import gds_settings, write_cufile_json

    gds = gds_settings(profile.gds)
    if not gds.enabled:
        return
    config_dir = Path(os.path.expandvars(gds.scratch)) / f"mltf-gds-{os.getpid()}" if gds.scratch \
        else work_dir / "gds" / profile.name
    write_cufile_json(config_dir / "cufile.json", gds.cufile)
    os.environ.update(gds.job_env(str(config_dir)))


def _start_cluster(name: str) -> tuple[Any, Any, Credentials]:
    """The profile, its running cluster, and the cluster's new credentials (removed again on failure)."""
    from mltf_flow.clusters.profiles import get_profile
    from mltf_flow.config import load_settings

    profile, settings = get_profile(name), load_settings()
    credentials = create(settings.work_dir)
    try:
        return profile, _make_cluster(profile, settings, credentials.security()), credentials
    except BaseException:
        credentials.remove()
        raise


def _make_cluster(profile: Any, settings: Any, security: Any) -> Any:
    from mltf_flow.clusters.profiles import LocalProfile

    cluster: Any
    if isinstance(profile, LocalProfile):
        import dask
        from distributed import LocalCluster

        from mltf_flow.clusters.dashboard import local_cluster_options
        from mltf_flow.clusters.worker_env import dask_config

        # Ranks and DataLoader workers start child processes: daemonic worker processes cannot (the
        # SLURM job script exports the same setting for its workers). The workers' environment: see
        # mltf_flow.clusters.worker_env (the nannies spawned below read it from this process's config).
        dask.config.set({"distributed.worker.daemon": False, **dask_config()})
        _gds_environment(profile, settings.work_dir)
        cluster = LocalCluster(
            n_workers=profile.workers,
            threads_per_worker=profile.threads_per_worker,
            memory_limit=profile.memory,
            host="127.0.0.1",
            processes=True,
            security=security,  # tls://, mutual: see mltf_flow.clusters.security
            **local_cluster_options(profile.dashboard_address),
        )
        return cluster
    import dask

    from mltf_flow.clusters.slurm import make_slurm_cluster, preflight

    # A worker that left (its job ended) is dropped after this long, and only then replaced (_Sizes): Dask's 15 s
    # wait for a worker to come back is for networks that flap, not for SLURM jobs that ended.
    dask.config.set({"distributed.deploy.lost-worker-timeout": f"{LOST_WORKER_S}s"})
    cluster = make_slurm_cluster(profile, settings.work_dir / "slurm-logs" / profile.name, security=security)
    try:
        preflight(profile, str(cluster.job_script()))
    except BaseException:
        cluster.close()
        raise
    return cluster


class _Sizes:
    """Keeps each scaled SLURM cluster at its size: a worker job that ended (its walltime, or retired so that a
    training continues on a fresh job: mltf_flow.continuation) is replaced by a new one. dask-jobqueue alone
    submits jobs only when asked to scale."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wanted: dict[str, tuple[Any, int]] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="mltf-keep-size", daemon=True).start()

    def scale(self, name: str, cluster: Any, jobs: int) -> None:
        with self.lock:
            cluster.scale(jobs=jobs)
            self.wanted[name] = (cluster, jobs)

    def _loop(self) -> None:
        while not self._stop.wait(KEEP_SIZE_INTERVAL_S):
            with self.lock:
                for cluster, jobs in self.wanted.values():
                    if len(getattr(cluster, "workers", {})) < jobs:
                        with contextlib.suppress(Exception):  # closing, or SLURM refuses: asked again later
                            cluster.scale(jobs=jobs)

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            self.wanted.clear()


def serve(commands: IO[str], answers: IO[str]) -> int:
    """Answer commands until EOF, then close every cluster started here."""
    clusters: dict[str, tuple[Any, Any, Credentials]] = {}
    sizes = _Sizes()

    def send(message: dict[str, Any]) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    send({"ok": True, "ready": True})
    try:
        for line in commands:
            try:
                request = json.loads(line)
                name = str(request["profile"])
                if request["cmd"] == "start":
                    if name not in clusters:
                        clusters[name] = _start_cluster(name)
                    profile, cluster, credentials = clusters[name]
                    # Without a dashboard the scheduler's HTTP server still has a link: it shows nothing.
                    link = (cluster.dashboard_link or "") if dashboard_enabled(profile.dashboard_address) else ""
                    send({"ok": True, "address": cluster.scheduler_address, "dashboard": link,
                          "security": str(credentials.directory)})
                elif request["cmd"] == "scale":
                    profile, cluster, _ = clusters[name]
                    if hasattr(cluster, "job_cls"):  # dask-jobqueue: scale by jobs, each of its worker processes
                        sizes.scale(name, cluster, profile.workers)
                    send({"ok": True})
                elif request["cmd"] == "jobs":  # the SLURM job ids of the cluster's workers (none for local)
                    _, cluster, _ = clusters[name]
                    jobs = [str(job.job_id) for job in getattr(cluster, "workers", {}).values()
                            if getattr(job, "job_id", None)]
                    send({"ok": True, "jobs": jobs})
                else:
                    send({"ok": False, "error": "ValueError", "message": f"unknown command {request['cmd']!r}"})
            except Exception as exc:  # reported to the parent, which raises it where it matters
                send({"ok": False, "error": type(exc).__name__, "message": str(exc)})
    finally:
        sizes.stop()
        quiet_close()
        for _, cluster, credentials in clusters.values():
            with contextlib.suppress(Exception):  # close the others even if one fails
                cluster.close(timeout=30)
            credentials.remove()
    return 0


def quiet_start() -> None:
    """Dask's own warning for a taken dashboard port stays off the console (see the module docstring)."""
    import warnings

    warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)


def quiet_close() -> None:
    """Closing clusters logs nothing below ERROR (see the module docstring)."""
    import logging

    for name in ("distributed", "dask_jobqueue", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> int:
    die_with_parent()
    quiet_start()
    # The protocol owns stdout; everything else the keeper (or dask) prints goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    if len(sys.argv) > 1:
        os.chdir(Path(sys.argv[1]))  # relative settings (a work_dir of .mltf) resolve as in the parent
    # Import the Dask stack now, while the parent is still scheduling: the first cluster starts faster.
    import dask_jobqueue  # noqa: F401
    import distributed  # noqa: F401

    return serve(sys.stdin, answers)


if __name__ == "__main__":
    sys.exit(main())
