"""Where a SLURM job stands: batched ``squeue``, then ``scontrol show job``, then ``sacct``.

SLURM forgets a finished job from ``squeue``/``scontrol`` after ``MinJobAge`` (300 s by default, 2 s on
the CI cluster) and only ``sacct`` remembers it, when accounting is enabled at all. So a lookup asks, for
every watched job at once:

1. ``squeue --states=all -j ID,ID,...`` (one call for all jobs; SLURM's answer for ids it no longer
   knows is "Invalid job id specified", which means *gone*, not an error);
2. ``scontrol show job -o ID`` for the ids squeue did not list (same controller memory, but it also
   gives the exit code);
3. ``sacct -X -P -j ID,...`` for ids neither knows; when SLURM answers that accounting is disabled, sacct
   is not asked again by this process.

A job none of them knows is reported as ``None``; the caller then reads the job's own record
(:mod:`mltf_flow.backend.record`). When the controller cannot be reached, :class:`SlurmUnavailable` is
raised, so a transient outage never looks like a vanished job.

Lookups are batched through one :class:`JobMonitor` per process: several ``SubmittedRun`` objects polling
at once cost one ``squeue`` per interval, not one each (b2luigi's ``SlurmJobStatusCache``, law's chunked
``squeue``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mltf_flow.errors import ClusterError, SlurmUnavailable
from mltf_flow.slurm.states import JobState, normalise_state, parse_exit_code

_SEP = "\x1f"  # reasons can hold spaces, commas and parentheses: use a separator no field contains
_SQUEUE_FORMAT = _SEP.join(("%i", "%T", "%r", "%N"))
_GONE = ("Invalid job id", "invalid job id")
# What sacct says when the cluster has no accounting at all (a slurmdbd outage is not that: asked again later).
_NO_ACCOUNTING = ("accounting storage is disabled", "Accounting storage is disabled")
_KV = re.compile(r"(\w[\w:/]*)=(\S*)")

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def _run(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmUnavailable(f"`{name}` is not on PATH: run on a SLURM login node or load the SLURM module.")
    return path


def parse_squeue(text: str) -> dict[str, JobState]:
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        parts = line.split(_SEP)
        if len(parts) < 2 or not parts[0].strip():
            continue
        job_id = parts[0].strip()
        states[job_id] = JobState(
            job_id, normalise_state(parts[1]), reason=(parts[2].strip() or None) if len(parts) > 2 else None,
            nodes=(parts[3].strip() or None) if len(parts) > 3 else None, source="squeue",
        )
    return states


def parse_scontrol(text: str) -> JobState | None:
    """``scontrol show job -o ID``: one line of Key=Value pairs."""
    fields = dict(_KV.findall(text))
    if "JobId" not in fields or "JobState" not in fields:
        return None
    code, sig = parse_exit_code(fields.get("ExitCode"))
    nodes = fields.get("NodeList")
    restarts = fields.get("Restarts", "")
    return JobState(fields["JobId"], normalise_state(fields["JobState"]), reason=fields.get("Reason") or None,
                    exit_code=code, signal=sig, nodes=None if nodes in (None, "", "(null)") else nodes,
                    source="scontrol", restarts=int(restarts) if restarts.isdigit() else None)


def parse_sacct(text: str) -> dict[str, JobState]:
    """``sacct -X -n -P -o JobID,State,ExitCode,Reason,NodeList``."""
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or not parts[0].strip():
            continue
        code, sig = parse_exit_code(parts[2])
        job_id = parts[0].strip()
        states[job_id] = JobState(
            job_id, normalise_state(parts[1]), reason=(parts[3].strip() or None) if len(parts) > 3 else None,
            exit_code=code, signal=sig, source="sacct",
            nodes=parts[4].strip() if len(parts) > 4 and parts[4].strip() not in ("", "None assigned") else None,
        )
    return states


@dataclass
class JobMonitor:
    """Batched job-state lookups for this process (see the module docstring)."""

    runner: Runner = _run
    #: squeue calls made (tests and benchmarks check that polling is batched).
    squeue_calls: int = 0
    sacct_available: bool | None = None
    _watched: set[str] = field(default_factory=set)
    _snapshot: dict[str, JobState | None] = field(default_factory=dict)
    _taken_at: float = 0.0

    def watch(self, job_ids: Iterable[str]) -> None:
        self._watched.update(job_ids)

    def unwatch(self, job_ids: Iterable[str]) -> None:
        self._watched.difference_update(job_ids)

    def states(self, job_ids: Sequence[str], max_age: float = 0.0) -> dict[str, JobState | None]:
        """The state of each id (None: no view knows it), from a snapshot at most ``max_age`` s old.

        A fresh lookup covers every watched job, not only ``job_ids``."""
        fresh = time.monotonic() - self._taken_at <= max_age
        if not fresh or any(j not in self._snapshot for j in job_ids):
            wanted = sorted(set(job_ids) | self._watched, key=lambda j: (len(j), j))
            self._snapshot = self.lookup(wanted)
            self._taken_at = time.monotonic()
        return {j: self._snapshot.get(j) for j in job_ids}

    def lookup(self, job_ids: Sequence[str]) -> dict[str, JobState | None]:
        """Ask SLURM now (squeue for all, then scontrol, then sacct for what is missing)."""
        if not job_ids:
            return {}
        found = self._squeue(job_ids)
        result: dict[str, JobState | None] = {j: found.get(j) for j in job_ids}
        missing = [j for j in job_ids if result[j] is None]
        for job_id in missing:
            result[job_id] = self.scontrol(job_id)
        missing = [j for j in missing if result[j] is None]
        if missing:
            result.update(self._sacct(missing))
        # A terminal state from squeue lacks the exit code: scontrol has it while the job is remembered.
        for job_id, state in list(result.items()):
            if state is not None and state.source == "squeue" and state.terminal:
                detailed = self.scontrol(job_id)
                if detailed is not None:
                    result[job_id] = JobState(job_id, state.state, state.reason or detailed.reason,
                                              detailed.exit_code, detailed.signal, state.nodes or detailed.nodes,
                                              "squeue")
        return result

    # -- the three views ------------------------------------------------------------------------------
    def _squeue(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        self.squeue_calls += 1
        proc = self.runner([_tool("squeue"), "-h", "--states=all", "-j", ",".join(job_ids), "-o", _SQUEUE_FORMAT])
        if proc.returncode != 0:
            if any(marker in proc.stderr for marker in _GONE):
                return {}  # every id is unknown to the controller: all of them left its memory
            raise SlurmUnavailable(f"squeue failed (exit code {proc.returncode}): {proc.stderr.strip()}")
        return parse_squeue(proc.stdout)

    def scontrol(self, job_id: str) -> JobState | None:
        proc = self.runner([_tool("scontrol"), "show", "job", "-o", job_id])
        if proc.returncode != 0:
            if any(marker in proc.stderr for marker in _GONE):
                return None
            raise SlurmUnavailable(f"scontrol show job {job_id} failed: {proc.stderr.strip()}")
        return parse_scontrol(proc.stdout)

    def _sacct(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        if self.sacct_available is False or shutil.which("sacct") is None:
            return {}
        proc = self.runner(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids),
                            "-o", "JobID,State,ExitCode,Reason,NodeList"])
        text = proc.stdout + proc.stderr
        if any(marker in text for marker in _NO_ACCOUNTING):
            self.sacct_available = False
            return {}
        if proc.returncode != 0:
            return {}  # slurmdbd is down: the wrapper's record still answers
        self.sacct_available = True
        return parse_sacct(proc.stdout)


_MONITORS: dict[int, JobMonitor] = {}


def monitor() -> JobMonitor:
    """This process's monitor (a forked child gets its own)."""
    pid = os.getpid()
    if pid not in _MONITORS:
        _MONITORS[pid] = JobMonitor()
    return _MONITORS[pid]


def describe_jobs(job_ids: Sequence[str], mon: JobMonitor | None = None) -> list[str]:
    """``job 123 PENDING (Resources)`` for each job SLURM knows (one batched lookup): why workers are not
    there yet, for the console."""
    states = (mon or monitor()).lookup(list(job_ids)) if job_ids else {}
    shown = []
    for job_id in job_ids:
        state = states.get(job_id)
        if state is not None:
            reason = f" ({state.reason})" if state.reason and state.reason not in ("None", "(null)") else ""
            shown.append(f"job {job_id} {state.state}{reason}")
    return shown


def job_state_now(job_id: str) -> JobState | None:
    """One unbatched lookup (the wrapper asks for its own job when a signal arrives): scontrol first, for its
    reason and restart count; None on any error."""
    try:
        monitor = JobMonitor()
        return monitor.scontrol(job_id) or monitor.lookup([job_id]).get(job_id)
    except (ClusterError, OSError, subprocess.SubprocessError):
        return None
