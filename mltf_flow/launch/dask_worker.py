"""Run a step's command on a Dask worker of the step's cluster (e.g. a GPU node obtained from SLURM).

The command runs under ``bash -c`` on the worker, in the project directory, with the worker's own
environment (so SLURM's and the job prologue's settings apply) plus the step's MLflow/mltf variables.
Its output goes to the step log, which lives in the work dir (a filesystem shared with the nodes, as
at any SLURM site); the launching process follows that file to the console. Stopping: a Dask ``Event``
per launch, polled by the worker every second; set on Ctrl-C / SIGTERM / failure of the launcher.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mltf_flow.clusters.profiles import Profile
from mltf_flow.launch.base import LaunchRequest, LaunchResult

# Variables of the launching process that the command needs on the worker (and nothing else of it:
# the worker's environment comes from its job). Credentials travel in memory, never in a job script.
_FORWARD = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "PYTHONHASHSEED")


def run_on_worker(
    command: str, cwd: str, env: Mapping[str, str], log_path: str, display: str, tail_lines: int, stop_event: str,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Executed on the worker: run the command (``timeout`` counts from its start there, not from the queue),
    return its exit code, stderr tail and whether it timed out."""
    from distributed import Event, get_client

    from mltf_flow.launch.local import run_streaming

    event = Event(stop_event, client=get_client())
    merged = {**os.environ, **env, "PATH": worker_path()}
    ended = run_streaming(
        command, cwd=Path(cwd), env=merged, log_path=Path(log_path), display=display, tail_lines=tail_lines,
        echo_prefix=None, should_stop=event.is_set, timeout=timeout,
    )
    return {"exit_code": ended.exit_code, "tail": ended.tail, "timed_out": ended.timed_out,
            "host": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID")}


def step_env(env: Mapping[str, str]) -> dict[str, str]:
    """What of the launching process's environment travels to the worker: the step's MLflow and mltf
    variables, the forwarded credentials and the paths of the cluster's TLS files (the worker's own
    environment comes from its job)."""
    mine = {k: v for k, v in env.items()
            if k.startswith(("MLFLOW_", "MLTF_", "DASK_SCHEDULER", "DASK_DISTRIBUTED__COMM__"))}
    mine.update({k: env[k] for k in _FORWARD if k in env})
    mine["PYTHONUNBUFFERED"] = "1"
    return mine


def worker_path() -> str:
    """PATH for a command on this worker: `python` is the worker's interpreter (the profile's python)."""
    return os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def log_end(log_path: Path) -> int:
    """Where echoing a step log starts: its end, so that a launch again into the same log (a continued training,
    a port retry) echoes only its own lines."""
    try:
        return log_path.stat().st_size
    except FileNotFoundError:
        return 0


def follow_log(log_path: Path, offset: int, prefix: str) -> int:
    """Echo new complete lines of a step log written by a worker to our console; return the new offset."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return offset
    if b"\n" not in chunk:
        return offset
    complete = chunk[: chunk.rindex(b"\n") + 1]
    for line in complete.decode("utf-8", errors="replace").splitlines():
        if line.startswith(("  ", "! ")):
            stream = sys.stderr if line.startswith("!") else sys.stdout
            stream.write(f"{prefix} {line[2:]}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    return offset + len(complete)


class DaskWorkerLauncher:
    """Runs the command as one Dask task on one worker (one GPU with ``resources={"GPU": 1}``)."""

    name = "dask-worker"

    def __init__(self, client: Any, profile: Profile) -> None:
        self.client = client
        self.profile = profile
        self.last: dict[str, Any] = {}

    def launch(self, request: LaunchRequest) -> LaunchResult:
        from distributed import Event

        start = time.monotonic()
        stop_name = f"mltf-stop-{os.getpid()}-{time.time_ns()}"
        stop = Event(stop_name, client=self.client)
        resources = {"GPU": 1} if self.profile.gpus_per_node else None
        request.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Pinned to the request's workers when it names some (a study's trial); Dask refuses
        # allow_other_workers without workers.
        pinned: dict[str, Any] = {"workers": list(request.workers), "allow_other_workers": False} \
            if request.workers else {}
        future = self.client.submit(
            run_on_worker, request.command, str(request.cwd), step_env(request.env), str(request.log_path),
            request.display_command or request.command, request.stderr_tail_lines, stop_name,
            request.timeout.seconds if request.timeout else None,
            resources=resources, pure=False, retries=0, key=f"mltf-step-{request.step}-{stop_name}", **pinned,
        )
        offset, prefix = log_end(request.log_path), f"[{request.step}@worker]"
        try:
            while True:
                try:
                    result = future.result(timeout=1.0)  # re-raises what the worker raised
                    break
                except TimeoutError:
                    if request.echo:
                        offset = follow_log(request.log_path, offset, prefix)
                    if request.should_stop is not None and not stop.is_set() and request.should_stop():
                        stop.set()  # the worker stops the command's session; its outcome comes back as usual
            if request.echo:
                follow_log(request.log_path, offset, prefix)
        except BaseException:
            stop.set()
            with contextlib.suppress(Exception):  # the worker may be gone already
                future.result(timeout=15)
            future.cancel()
            raise
        self.last = result
        return LaunchResult(int(result["exit_code"]), list(result["tail"]), request.log_path,
                            time.monotonic() - start, timed_out=bool(result.get("timed_out")))
