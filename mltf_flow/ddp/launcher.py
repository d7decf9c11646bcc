"""Run a step's command as a torchrun-style DDP job: one process per rank, each on its own Dask worker.

How (following Ray Train rather than dask-pytorch-ddp, which hard-codes port 23456 and hangs when a rank
dies; see ``nccl_gds_ddp.md`` §3):

1. every worker reports its host, SLURM job and GPU; :func:`~mltf_flow.ddp.plan.plan_ranks` orders them;
2. a free port is chosen *on rank 0's host* (a task pinned there), ``MASTER_ADDR`` is rank 0's worker
   address (on the profile's interface, so reachable by every rank);
3. one task per rank, pinned (``workers=[addr]``, ``allow_other_workers=False``, ``pure=False``), runs
   the command in a fresh process with the torchrun variables, the fabric's NCCL/gloo settings resolved
   on that node (a fresh process reads them at its first communicator, as NCCL requires), and the
   step's MLflow variables (rank 0 owns the run; every rank logs system metrics as ``rank-<r>``);
4. the launcher watches the tasks and the workers: the first rank that exits non-zero, raises, or whose
   worker disappears (SLURM job cancelled, preempted, out of walltime) stops every other rank through a
   Dask ``Event``; after a bounded grace the result lists every rank's status and stderr tail.

A rank that fails because the chosen port was taken meanwhile (``EADDRINUSE``) makes the launcher try
again with a new port, twice at most.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mltf_flow.clusters.profiles import Profile, SlurmProfile
from mltf_flow.ddp.plan import RankAssignment, describe, plan_ranks, slots_from_facts, torchrun_env
from mltf_flow.errors import ConfigError
from mltf_flow.launch.base import LaunchRequest, LaunchResult
from mltf_flow.launch.dask_worker import follow_log, log_end, step_env, worker_path
from mltf_flow.tags import TAG_DDP_FABRIC, TAG_DDP_FABRIC_ENV, TAG_DDP_MASTER, TAG_DDP_RANKS, TAG_DDP_WORLD_SIZE
from mltf_flow.time_limit import EXIT_CONTINUE

_log = logging.getLogger(__name__)

#: Seconds the other ranks get to stop after one failed, before they are reported as not stopping.
STOP_GRACE_S = 30.0
_PORT_TAKEN = ("EADDRINUSE", "Address already in use", "address already in use")


# -- executed on the workers ----------------------------------------------------------------------------
def worker_facts() -> dict[str, Any]:
    """What a worker says about itself (run on every worker before planning)."""
    return {"hostname": socket.gethostname(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "device": os.environ.get("MLTF_GPU_DEVICE"), "pid": os.getpid()}


def free_port() -> int:
    """A port nobody listens on, on this host (all interfaces: the TCPStore binds them all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def run_rank(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one rank's process to its end; return its exit code, stderr tail and effective fabric."""
    from distributed import Event, get_client

    from mltf_flow.ddp.monitor import RankMonitor
    from mltf_flow.fabric.spec import resolve_fabric
    from mltf_flow.launch.local import run_streaming

    log_path = Path(spec["log_path"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rank = int(spec["env"]["RANK"])
    try:
        fabric = resolve_fabric(spec["fabric"], interface=spec["interface"])
    except Exception as exc:  # e.g. strict RoCE without a port: this rank cannot start
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"! mltf_flow: {exc}\n")
        return {"exit_code": 2, "tail": [str(exc)], "fabric": {}, "note": "fabric error"}
    env = {**os.environ, **fabric.env, **spec["env"], "PATH": worker_path()}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"# rank {rank} on {socket.gethostname()} (SLURM job {os.environ.get('SLURM_JOB_ID', '-')}); "
                  f"{fabric.note}\n")
    stop = Event(spec["stop_event"], client=get_client())
    monitor = None
    run_id = spec["env"].get("MLFLOW_RUN_ID")
    if run_id and spec.get("tracking_uri"):
        monitor = RankMonitor(run_id, spec["tracking_uri"], f"rank-{rank}", env.get("MLTF_GPU_DEVICE"),
                              float(spec["metrics_interval"]))
    ended = None
    try:
        # The command first, its monitor alongside once it runs: starting the monitor imports MLflow
        # (seconds), which would otherwise pass before the rank's own first line.
        ended = run_streaming(
            spec["command"], cwd=Path(spec["cwd"]), env=env, log_path=log_path, display=spec["display"],
            tail_lines=int(spec["tail_lines"]), echo_prefix=None, should_stop=stop.is_set,
            timeout=spec.get("timeout"),
            on_start=None if monitor is None else monitor.start_in_background,
        )
    finally:
        if monitor is not None:
            # A rank that stopped for its job's time limit does not wait for a monitor still starting: the job
            # ends soon, and the launcher must see this task end before it does.
            continuing = ended is not None and ended.exit_code == EXIT_CONTINUE
            monitor.finish(start_wait_s=2.0 if continuing else None)
    outcome = {"exit_code": ended.exit_code, "tail": ended.tail, "fabric": fabric.env, "note": fabric.note}
    if ended.timed_out:
        outcome.update(timed_out=True, status=f"timed out after {spec['timeout']:g} s (stopped)")
    return outcome


def worker_addresses(dask_scheduler: Any) -> list[str]:
    return list(dask_scheduler.workers)


# -- the launcher -----------------------------------------------------------------------------------------
class DDPLauncher:
    """Runs a command as ``world_size`` ranks on the workers of a Dask cluster (see the module docstring)."""

    name = "ddp"

    def __init__(self, client: Any, profile: Profile, world_size: int, *, stop_grace_s: float = STOP_GRACE_S) -> None:
        self.client = client
        self.profile = profile
        self.world_size = world_size
        self.stop_grace_s = stop_grace_s

    def plan(self, among: tuple[str, ...] | None = None) -> list[RankAssignment]:
        """Ranks over the cluster's workers, or over ``among`` (addresses) only."""
        facts = self.client.run(worker_facts, workers=list(among) if among else None)
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        names = {addr: str(info.get("name", addr)) for addr, info in workers.items()}
        return plan_ranks(slots_from_facts(facts, names), self.world_size)

    def rank_log(self, request: LaunchRequest, rank: int) -> Path:
        if rank == 0:
            return request.log_path
        return request.log_path.with_name(f"{request.log_path.stem}.rank{rank}.log")

    def launch(self, request: LaunchRequest) -> LaunchResult:
        start = time.monotonic()
        for attempt in range(3):
            result, port_taken = self._launch_once(request, start)
            if not port_taken or attempt == 2:
                return result
            _log.info(f"rank 0 found its port taken; restarting the {self.world_size} ranks on a new port")
        raise AssertionError("unreachable")

    def _launch_once(self, request: LaunchRequest, start: float) -> tuple[LaunchResult, bool]:
        from distributed import Event

        plan = self.plan(request.workers)
        master = plan[0].worker
        port = self.client.submit(free_port, workers=[master.address], allow_other_workers=False,
                                  pure=False).result(timeout=60)
        interface = self.profile.interface or ("lo" if master.ip.startswith("127.") else None)
        token = f"{os.getpid()}-{time.time_ns()}"
        stop = Event(f"mltf-ddp-stop-{token}", client=self.client)
        run_id = request.env.get("MLFLOW_RUN_ID", token)
        if request.on_tags is not None:
            request.on_tags({
                TAG_DDP_WORLD_SIZE: str(self.world_size),
                TAG_DDP_MASTER: f"{master.ip}:{port}",
                TAG_DDP_RANKS: json.dumps(describe(plan)),
            })
        futures = self._submit_ranks(request, plan, f"{master.ip}", port, token, run_id, interface)
        changed = threading.Event()  # set when any rank's task ends: the loop below wakes at once
        for future in futures.values():
            future.add_done_callback(lambda _: changed.set())
        outcomes: dict[int, dict[str, Any]] = {}
        first: int | None = None
        stop_by: float | None = None
        offset, checked = log_end(request.log_path), 0.0
        prefix = f"[{request.step}@rank0]"
        try:
            pending = dict(futures)
            while pending:
                changed.wait(0.5)
                changed.clear()
                if request.echo:
                    offset = follow_log(request.log_path, offset, prefix)
                if request.should_stop is not None and not stop.is_set() and request.should_stop():
                    stop.set()  # asked to stop (a pruned trial): every rank stops, their outcomes come back
                    stop_by = time.monotonic() + self.stop_grace_s
                for rank, future in list(pending.items()):
                    if future.done():
                        del pending[rank]
                        outcomes[rank] = self._outcome(future)
                if time.monotonic() - checked >= 1.0:
                    checked = time.monotonic()
                    alive = set(self.client.run_on_scheduler(worker_addresses))
                    for rank in [r for r in pending if plan[r].worker.address not in alive]:
                        pending.pop(rank).cancel()
                        job = plan[rank].worker.slurm_job
                        outcomes[rank] = {"exit_code": None, "tail": [], "lost": True, "order": time.monotonic(),
                                          "status":
                                          "lost: its Dask worker disappeared"
                                          + (f" (SLURM job {job} ended: cancelled, preempted or out of walltime?)"
                                             if job else "")}
                # A rank that stopped for its job's time limit (exit 75) is not a failure: every rank agreed on
                # that stop (mltf_flow.time_limit) and exits the same way; one that does not is stopped after the grace.
                if stop_by is None and any(o["exit_code"] == EXIT_CONTINUE for o in outcomes.values()):
                    stop_by = time.monotonic() + self.stop_grace_s
                failed = [r for r, o in outcomes.items() if o["exit_code"] not in (0, EXIT_CONTINUE)]
                if failed and first is None:
                    first = min(failed, key=lambda r: outcomes[r].get("order", 0))
                    stop.set()
                    stop_by = time.monotonic() + self.stop_grace_s
                if stop_by is not None and time.monotonic() > stop_by:
                    stop.set()
                    for rank, future in pending.items():
                        future.cancel()
                        outcomes[rank] = {"exit_code": None, "tail": [], "status":
                                          f"did not stop within {self.stop_grace_s:.0f} s (cancelled)"}
                    pending = {}
            if request.echo:
                follow_log(request.log_path, offset, prefix)
        except BaseException:
            stop.set()  # Ctrl-C / SIGTERM of the launcher: no rank may keep running
            for future in futures.values():
                with contextlib.suppress(Exception):
                    future.result(timeout=15)
                future.cancel()
            raise
        return self._result(request, plan, outcomes, first, start), self._port_taken(outcomes, first)

    def _submit_ranks(self, request: LaunchRequest, plan: Any, master_ip: str, port: int, token: str, run_id: str,
                      interface: str | None) -> dict[int, Any]:
        """One Dask task per rank, pinned to its worker (with one GPU where the profile has GPUs)."""
        shared = step_env(request.env)
        futures = {}
        for ra in plan:
            spec = {
                "command": request.command, "cwd": str(request.cwd), "display": request.display_command or
                request.command, "log_path": str(self.rank_log(request, ra.rank)),
                "tail_lines": request.stderr_tail_lines, "stop_event": f"mltf-ddp-stop-{token}",
                "env": {**shared, **torchrun_env(ra, master_ip, port, run_id)},
                "fabric": self.profile.fabric, "interface": interface,
                "tracking_uri": request.env.get("MLFLOW_TRACKING_URI"),
                "metrics_interval": request.env.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "10"),
                # Each rank counts from its own start: a rank that overruns stops, and the others with it.
                "timeout": request.timeout.seconds if request.timeout else None,
            }
            futures[ra.rank] = self.client.submit(
                run_rank, spec, workers=[ra.worker.address], allow_other_workers=False, pure=False, retries=0,
                resources={"GPU": 1} if self.profile.gpus_per_node else None,
                key=f"mltf-rank-{ra.rank}-{request.step}-{token}",
            )
        return futures

    @staticmethod
    def _outcome(future: Any) -> dict[str, Any]:
        try:
            got: dict[str, Any] = future.result()
        except Exception as exc:  # the task itself raised on the worker
            return {"exit_code": None, "tail": [f"{type(exc).__name__}: {exc}"],
                    "status": f"the launcher task raised {type(exc).__name__}", "order": time.monotonic()}
        got["order"] = time.monotonic()
        return got

    @staticmethod
    def _port_taken(outcomes: Mapping[int, Mapping[str, Any]], first: int | None) -> bool:
        if first is None:
            return False
        return any(marker in line for line in outcomes[first].get("tail", []) for marker in _PORT_TAKEN)

    def _result(self, request: LaunchRequest, plan: list[RankAssignment], outcomes: Mapping[int, dict[str, Any]],
                first: int | None, start: float) -> LaunchResult:
        logs = tuple((f"rank{ra.rank}.log", self.rank_log(request, ra.rank)) for ra in plan if ra.rank > 0)
        rank0 = outcomes.get(0, {})
        if request.on_tags is not None and rank0.get("fabric") is not None:
            with contextlib.suppress(Exception):
                request.on_tags({TAG_DDP_FABRIC: str(rank0.get("note", "")),
                                 TAG_DDP_FABRIC_ENV: json.dumps(rank0.get("fabric", {}), sort_keys=True)})
        duration = time.monotonic() - start
        if first is None and any(o.get("exit_code") == EXIT_CONTINUE for o in outcomes.values()):
            stopped = sorted(r for r, o in outcomes.items() if o.get("exit_code") == EXIT_CONTINUE)
            return LaunchResult(EXIT_CONTINUE, [], request.log_path, duration, extra_logs=logs, summary=(
                f"ranks {', '.join(map(str, stopped))} stopped for the time limit after a checkpoint (exit code 75)"))
        if first is None:
            return LaunchResult(0, [], request.log_path, duration, extra_logs=logs)
        lines = [f"distributed training failed: rank {first} {self._status(outcomes[first])} first; "
                 f"every other rank was stopped. Ranks:"]
        for ra in plan:
            outcome = outcomes.get(ra.rank, {"exit_code": None, "tail": [], "status": "no report"})
            where = f"{ra.worker.hostname}" + (f", SLURM job {ra.worker.slurm_job}" if ra.worker.slurm_job else "")
            state = self._status(outcome)
            if ra.rank != first and outcome.get("exit_code") not in (0, None):
                state += f" (stopped after rank {first} failed)"
            lines.append(f"  rank {ra.rank} ({where}, worker {ra.worker.address}): {state}")
            tail = outcome.get("tail") or self._log_tail(self.rank_log(request, ra.rank))
            lines.extend(f"      ! {line}" for line in tail[-8:])
        code = outcomes[first].get("exit_code")
        lost = tuple(str(ra.worker.slurm_job) for ra in plan
                     if outcomes.get(ra.rank, {}).get("lost") and ra.worker.slurm_job)
        return LaunchResult(int(code) if code is not None else -9, list(outcomes[first].get("tail", [])),
                            request.log_path, duration, summary="\n".join(lines), extra_logs=logs,
                            timed_out=bool(outcomes[first].get("timed_out")), lost_jobs=lost)

    @staticmethod
    def _status(outcome: Mapping[str, Any]) -> str:
        if outcome.get("status"):
            return str(outcome["status"])
        code = outcome.get("exit_code")
        if code == 0:
            return "exited 0"
        if isinstance(code, int) and code < 0:
            return f"killed by signal {-code}"
        return f"exited with code {code}"

    @staticmethod
    def _log_tail(path: Path, lines: int = 8) -> list[str]:
        """The last stderr lines a rank wrote to its log (for ranks whose worker vanished)."""
        try:
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        return [line[2:] for line in text if line.startswith("! ")][-lines:]


def check_world_size(profile: Profile, world_size: int) -> None:
    """A clear error before anything is submitted when the profile cannot give ``world_size`` ranks."""
    if world_size < 1:
        raise ConfigError(f"world_size={world_size}: need at least 1 rank.")
    if world_size > profile.expected_workers:
        per = f"{profile.workers} jobs x {profile.worker_processes} worker(s)" \
            if isinstance(profile, SlurmProfile) else f"{profile.workers} workers"
        raise ConfigError(
            f"world_size={world_size} but profile {profile.name!r} gives {profile.expected_workers} workers "
            f"({per}; {profile.origin}). Raise workers/gpus_per_node in the profile or lower world_size."
        )
