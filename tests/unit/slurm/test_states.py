"""SLURM job states -> MLflow run statuses (mltf_flow.slurm.states): the STATES table, name normalisation
of what squeue/scontrol/sacct print, JobState's derived values and ExitCode parsing."""

from __future__ import annotations

import pytest

from mltf_flow.slurm.states import (
    CODES,
    FAILED,
    FINISHED,
    KILLED,
    RUNNING,
    SCHEDULED,
    STATES,
    TERMINAL_RUN_STATUSES,
    UNKNOWN,
    JobState,
    info,
    normalise_state,
    parse_exit_code,
)

# What each SLURM job state must mean for the job's MLflow run, written from SLURM's descriptions
# (https://slurm.schedmd.com/job_state_codes.html, squeue(1) JOB STATE CODES), not from the module's table:
# (state, squeue's compact code or None, MLflow run status, the job is over, SLURM may requeue it).
EXPECTED = [
    # waiting: the run is SCHEDULED
    ("PENDING", "PD", SCHEDULED, False, False),
    ("CONFIGURING", "CF", SCHEDULED, False, False),
    ("REQUEUED", "RQ", SCHEDULED, False, False),
    ("REQUEUE_FED", "RF", SCHEDULED, False, False),
    ("REQUEUE_HOLD", "RH", SCHEDULED, False, False),
    ("RESV_DEL_HOLD", "RD", SCHEDULED, False, False),
    ("POWER_UP_NODE", None, SCHEDULED, False, False),
    # holding resources, not over: RUNNING
    ("RUNNING", "R", RUNNING, False, False),
    ("COMPLETING", "CG", RUNNING, False, False),
    ("SUSPENDED", "S", RUNNING, False, False),
    ("STOPPED", "ST", RUNNING, False, False),
    ("SIGNALING", "SI", RUNNING, False, False),
    ("STAGE_OUT", "SO", RUNNING, False, False),
    ("RESIZING", "RS", RUNNING, False, False),
    ("UPDATE_DB", None, RUNNING, False, False),
    # over: only a batch script that exited 0 is a success
    ("COMPLETED", "CD", FINISHED, True, False),
    ("FAILED", "F", FAILED, True, False),
    ("TIMEOUT", "TO", FAILED, True, False),
    ("OUT_OF_MEMORY", "OOM", FAILED, True, False),
    ("DEADLINE", "DL", FAILED, True, False),
    ("SPECIAL_EXIT", "SE", FAILED, True, False),
    ("REVOKED", "RV", FAILED, True, False),
    ("LAUNCH_FAILED", None, FAILED, True, False),
    ("RECONFIG_FAIL", None, FAILED, True, False),
    ("NODE_FAIL", "NF", FAILED, True, True),
    ("BOOT_FAIL", "BF", FAILED, True, True),
    # ended by someone else's decision
    ("CANCELLED", "CA", KILLED, True, False),
    ("PREEMPTED", "PR", KILLED, True, True),
]


@pytest.mark.parametrize(("state", "code", "run_status", "terminal", "requeueable"), EXPECTED,
                         ids=[row[0] for row in EXPECTED])
def test_state_meaning(state: str, code: str | None, run_status: str, terminal: bool, requeueable: bool) -> None:
    for printed in (state, state.lower(), *([code, code.lower()] if code else [])):
        job = JobState("7", printed)
        assert normalise_state(printed) == state, printed
        assert info(printed) is not UNKNOWN, printed
        assert (job.run_status, job.terminal, job.info.requeueable) == (run_status, terminal, requeueable), printed
        assert job.describe().startswith(f"{printed}: ") and len(job.describe()) > len(printed) + 2, printed


def test_every_state_is_expected() -> None:
    """A state added to the table must get an expectation above (and a compact code squeue prints)."""
    assert set(STATES) == {row[0] for row in EXPECTED}
    assert set(CODES) == {row[1] for row in EXPECTED if row[1]}


def test_table_is_consistent() -> None:
    """Over is exactly 'a final MLflow status'; only ended states are requeueable; each state is explained."""
    for name, meaning in STATES.items():
        assert meaning.terminal == (meaning.run_status in TERMINAL_RUN_STATUSES), name
        assert meaning.run_status in {SCHEDULED, RUNNING, FINISHED, FAILED, KILLED}, name
        assert not meaning.requeueable or meaning.terminal, name
        assert meaning.meaning, name
        assert name == name.upper() and " " not in name, name
    # Only COMPLETED means success: no failure state may be reported as FINISHED.
    assert [n for n, m in STATES.items() if m.run_status == FINISHED] == ["COMPLETED"]


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("CANCELLED by 1000", "CANCELLED"),  # sacct
        ("CANCELLED+", "CANCELLED"),  # sacct, truncated column
        ("CD", "COMPLETED"),  # squeue %t
        ("cd", "COMPLETED"),
        ("completed", "COMPLETED"),
        ("  RUNNING\n", "RUNNING"),
        ("PD", "PENDING"),
        ("OOM", "OUT_OF_MEMORY"),
        ("S", "SUSPENDED"),
        ("TO", "TIMEOUT"),
        ("NODE_FAIL", "NODE_FAIL"),
        ("SOMETHING_NEW", "SOMETHING_NEW"),
    ],
)
def test_normalise_state(raw: str, name: str) -> None:
    assert normalise_state(raw) == name


def test_info_reads_raw_names_and_keeps_polling_on_unknown_states() -> None:
    assert info("CANCELLED by 0") is STATES["CANCELLED"]
    assert info("to") is STATES["TIMEOUT"]
    unknown = info("A_STATE_FROM_SLURM_30")
    assert unknown is UNKNOWN
    assert not unknown.terminal
    assert unknown.run_status == RUNNING


def test_job_state_derived_values() -> None:
    job = JobState("42", "CANCELLED by 1000", source="sacct")
    assert job.terminal
    assert job.run_status == KILLED
    assert job.info is STATES["CANCELLED"]
    pending = JobState("43", "PD")
    assert not pending.terminal
    assert pending.run_status == SCHEDULED


def test_describe() -> None:
    assert JobState("1", "TIMEOUT", reason="TimeLimit").describe() == "TIMEOUT (TimeLimit): killed at its time limit"
    for empty in (None, "None", "(null)", ""):
        assert JobState("1", "COMPLETED", reason=empty).describe() == "COMPLETED: ended with exit code 0"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("3:0", (3, 0)),
        ("0:15", (0, 15)),
        ("0:0", (0, 0)),
        ("255:9", (255, 9)),
        ("1", (1, None)),
        ("", (None, None)),
        (None, (None, None)),
        ("n/a", (None, None)),
    ],
)
def test_parse_exit_code(text: str | None, parsed: tuple[int | None, int | None]) -> None:
    assert parse_exit_code(text) == parsed
