"""SLURM job states -> MLflow run statuses (mltf_flow.jobs.states): the STATES table, name normalisation
of what squeue/scontrol/sacct print, JobState's derived values and ExitCode parsing."""

from __future__ import annotations

import pytest

from mltf_flow.jobs.states import (
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

# The job states of SLURM's squeue(1) "JOB STATE CODES" section (code -> name).
SQUEUE_STATE_CODES = {
    "BF": "BOOT_FAIL", "CA": "CANCELLED", "CD": "COMPLETED", "CF": "CONFIGURING", "CG": "COMPLETING",
    "DL": "DEADLINE", "F": "FAILED", "NF": "NODE_FAIL", "OOM": "OUT_OF_MEMORY", "PD": "PENDING",
    "PR": "PREEMPTED", "R": "RUNNING", "RD": "RESV_DEL_HOLD", "RF": "REQUEUE_FED", "RH": "REQUEUE_HOLD",
    "RQ": "REQUEUED", "RS": "RESIZING", "RV": "REVOKED", "SI": "SIGNALING", "SE": "SPECIAL_EXIT",
    "SO": "STAGE_OUT", "ST": "STOPPED", "S": "SUSPENDED", "TO": "TIMEOUT",
}


def test_every_squeue_state_code_is_known_and_maps_to_its_name() -> None:
    assert CODES == SQUEUE_STATE_CODES
    assert set(SQUEUE_STATE_CODES.values()) <= set(STATES)


@pytest.mark.parametrize(
    ("state", "run_status", "terminal", "requeueable"),
    [
        ("PENDING", SCHEDULED, False, False),
        ("CONFIGURING", SCHEDULED, False, False),
        ("REQUEUED", SCHEDULED, False, False),
        ("REQUEUE_HOLD", SCHEDULED, False, False),
        ("RUNNING", RUNNING, False, False),
        ("COMPLETING", RUNNING, False, False),
        ("SUSPENDED", RUNNING, False, False),
        ("STOPPED", RUNNING, False, False),
        ("COMPLETED", FINISHED, True, False),
        ("FAILED", FAILED, True, False),
        ("TIMEOUT", FAILED, True, False),
        ("OUT_OF_MEMORY", FAILED, True, False),
        ("DEADLINE", FAILED, True, False),
        ("NODE_FAIL", FAILED, True, True),
        ("BOOT_FAIL", FAILED, True, True),
        ("CANCELLED", KILLED, True, False),
        ("PREEMPTED", KILLED, True, True),
    ],
)
def test_state_meaning(state: str, run_status: str, terminal: bool, requeueable: bool) -> None:
    meaning = STATES[state]
    assert (meaning.run_status, meaning.terminal, meaning.requeueable) == (run_status, terminal, requeueable)


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
