"""Every SLURM job state, and what it means for the job's MLflow run.

One table, :data:`STATES`, maps each state name that ``squeue -o %T``, ``scontrol show job`` or ``sacct``
prints to an MLflow run status and says whether the job is over. States and flags follow SLURM's
documentation (https://slurm.schedmd.com/job_state_codes.html and the JOB STATE CODES section of
https://slurm.schedmd.com/squeue.html). mlflow-slurm maps only six of them and treats CANCELLED, TIMEOUT,
OUT_OF_MEMORY and NODE_FAIL as "unmapped"; here nothing is unmapped: a state SLURM adds later is
treated as still running (we keep polling) and resolved once the job leaves SLURM's views.
"""

from __future__ import annotations

from dataclasses import dataclass

# MLflow run statuses (mlflow.entities.RunStatus names; strings keep this module free of mlflow).
SCHEDULED, RUNNING, FINISHED, FAILED, KILLED = "SCHEDULED", "RUNNING", "FINISHED", "FAILED", "KILLED"
TERMINAL_RUN_STATUSES = frozenset({FINISHED, FAILED, KILLED})


@dataclass(frozen=True)
class StateInfo:
    """What one SLURM state means."""

    run_status: str
    #: The job is over (it will not run again by itself).
    terminal: bool
    #: SLURM may requeue a job in this state (preemption with requeue, node failure with JobRequeue=1):
    #: treat it as final only once it persists or the job leaves SLURM's views.
    requeueable: bool = False
    meaning: str = ""


STATES: dict[str, StateInfo] = {
    # -- waiting --------------------------------------------------------------------------------------
    "PENDING": StateInfo(SCHEDULED, False, meaning="queued, waiting for resources or priority"),
    "CONFIGURING": StateInfo(SCHEDULED, False, meaning="allocated, nodes booting or being set up"),
    "REQUEUED": StateInfo(SCHEDULED, False, meaning="being put back in the queue"),
    "REQUEUE_FED": StateInfo(SCHEDULED, False, meaning="requeued by the federation"),
    "REQUEUE_HOLD": StateInfo(SCHEDULED, False, meaning="requeued and held (scontrol release to continue)"),
    "RESV_DEL_HOLD": StateInfo(SCHEDULED, False, meaning="held: its reservation was deleted"),
    "POWER_UP_NODE": StateInfo(SCHEDULED, False, meaning="waiting for a node to power up"),
    # -- running ---------------------------------------------------------------------------------------
    "RUNNING": StateInfo(RUNNING, False, meaning="running"),
    "COMPLETING": StateInfo(RUNNING, False, meaning="ending: processes are being cleaned up"),
    "SUSPENDED": StateInfo(RUNNING, False, meaning="suspended (scontrol suspend or gang scheduling)"),
    "STOPPED": StateInfo(RUNNING, False, meaning="stopped with SIGSTOP, still holding its resources"),
    "SIGNALING": StateInfo(RUNNING, False, meaning="being signalled"),
    "STAGE_OUT": StateInfo(RUNNING, False, meaning="staging out data (burst buffer)"),
    "RESIZING": StateInfo(RUNNING, False, meaning="changing size"),
    "UPDATE_DB": StateInfo(RUNNING, False, meaning="being updated in the accounting database"),
    # -- ended -------------------------------------------------------------------------------------------
    "COMPLETED": StateInfo(FINISHED, True, meaning="ended with exit code 0"),
    "FAILED": StateInfo(FAILED, True, meaning="ended with a non-zero exit code"),
    "TIMEOUT": StateInfo(FAILED, True, meaning="killed at its time limit"),
    "OUT_OF_MEMORY": StateInfo(FAILED, True, meaning="killed for exceeding its memory"),
    "NODE_FAIL": StateInfo(FAILED, True, requeueable=True, meaning="a node of the job failed"),
    "BOOT_FAIL": StateInfo(FAILED, True, requeueable=True, meaning="a node failed to boot"),
    "DEADLINE": StateInfo(FAILED, True, meaning="ended at its --deadline"),
    "SPECIAL_EXIT": StateInfo(FAILED, True, meaning="held after a special exit code"),
    "REVOKED": StateInfo(FAILED, True, meaning="revoked by the federation (ran elsewhere)"),
    "LAUNCH_FAILED": StateInfo(FAILED, True, meaning="could not be launched"),
    "RECONFIG_FAIL": StateInfo(FAILED, True, meaning="node reconfiguration failed"),
    "CANCELLED": StateInfo(KILLED, True, meaning="cancelled (scancel or an administrator)"),
    "PREEMPTED": StateInfo(KILLED, True, requeueable=True, meaning="preempted by a higher-priority job"),
}
#: States a job might show that SLURM adds in a later version: polled on, never a crash.
UNKNOWN = StateInfo(RUNNING, False, meaning="a state this version of mltf_flow does not know")

# squeue's compact codes (%t), for completeness: scontrol/sacct print names, squeue -o %T too.
CODES = {
    "BF": "BOOT_FAIL", "CA": "CANCELLED", "CD": "COMPLETED", "CF": "CONFIGURING", "CG": "COMPLETING",
    "DL": "DEADLINE", "F": "FAILED", "NF": "NODE_FAIL", "OOM": "OUT_OF_MEMORY", "PD": "PENDING",
    "PR": "PREEMPTED", "R": "RUNNING", "RD": "RESV_DEL_HOLD", "RF": "REQUEUE_FED", "RH": "REQUEUE_HOLD",
    "RQ": "REQUEUED", "RS": "RESIZING", "RV": "REVOKED", "SI": "SIGNALING", "SE": "SPECIAL_EXIT",
    "SO": "STAGE_OUT", "ST": "STOPPED", "S": "SUSPENDED", "TO": "TIMEOUT",
}


def normalise_state(raw: str) -> str:
    """The state name in what a SLURM command printed: ``CANCELLED by 1000`` (sacct), ``CANCELLED+``
    (sacct, truncated), ``CD`` (squeue %t) and ``completed`` all give one name."""
    word = raw.strip().split(" ", 1)[0].rstrip("+").upper()
    return CODES.get(word, word)


def info(state: str) -> StateInfo:
    return STATES.get(normalise_state(state), UNKNOWN)


@dataclass(frozen=True)
class JobState:
    """A job's state as one of SLURM's views (or the job's own wrapper) reported it."""

    job_id: str
    state: str
    reason: str | None = None
    #: The batch script's exit code and the signal that ended it (``ExitCode=3:0``), where known.
    exit_code: int | None = None
    signal: int | None = None
    nodes: str | None = None
    #: Which view answered: squeue, scontrol, sacct or wrapper.
    source: str = "squeue"
    #: How often SLURM requeued the job (scontrol's ``Restarts``), where known.
    restarts: int | None = None

    @property
    def info(self) -> StateInfo:
        return info(self.state)

    @property
    def terminal(self) -> bool:
        return self.info.terminal

    @property
    def run_status(self) -> str:
        return self.info.run_status

    def describe(self) -> str:
        """``TIMEOUT (TimeLimit): killed at its time limit``."""
        reason = f" ({self.reason})" if self.reason and self.reason not in ("None", "(null)") else ""
        return f"{self.state}{reason}: {self.info.meaning}"


def parse_exit_code(text: str | None) -> tuple[int | None, int | None]:
    """``3:0`` -> (3, 0); SLURM prints exit code and signal separated by a colon."""
    if not text:
        return None, None
    code, _, sig = text.partition(":")
    return (int(code) if code.strip().isdigit() else None), (int(sig) if sig.strip().isdigit() else None)
