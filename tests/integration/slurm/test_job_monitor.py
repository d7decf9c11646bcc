"""JobMonitor (mltf_flow.slurm.query) against the real SLURM of tests/infra/slurm.sh: unknown ids, a held job,
batching into one squeue call, snapshots, accounting disabled (as on the CI cluster), a cancelled job until SLURM
forgets it, and the parsers on what this SLURM prints. The parsers on fixed text and the conditions a test
cluster cannot show are in tests/unit/slurm/test_query.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from mltf_flow.slurm.query import JobMonitor, describe_jobs, job_state_now, parse_scontrol, parse_squeue
from mltf_flow.slurm.states import KILLED, SCHEDULED, JobState
from tests.helpers import wait_until

pytestmark = pytest.mark.slurm


@dataclass
class Recorder:
    """The real SLURM commands, with the name of each command run recorded."""

    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)

    def tool_calls(self, tool: str) -> list[list[str]]:
        return [c for c in self.calls if os.path.basename(c[0]) == tool]


@pytest.fixture
def held_job() -> Iterator[str]:
    """A real job that stays PENDING (held): it uses no resources and is cancelled afterwards."""
    proc = subprocess.run(["sbatch", "--parsable", "--hold", "--job-name=mltf-unit-held", "--output=/dev/null",
                           "--wrap", "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    try:
        yield job_id
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


def test_unknown_id_is_gone_not_an_error() -> None:
    mon = JobMonitor()
    assert mon.lookup(["999999"]) == {"999999": None}
    assert mon.squeue_calls == 1


def test_lookup_of_nothing_asks_nothing() -> None:
    mon = JobMonitor()
    assert mon.lookup([]) == {}
    assert mon.states([]) == {}
    assert mon.squeue_calls == 0


def test_several_ids_cost_one_squeue_call() -> None:
    runner = Recorder()
    mon = JobMonitor(runner=runner)
    ids = ["999997", "999998", "999999"]
    assert mon.states(ids) == dict.fromkeys(ids)
    assert mon.squeue_calls == 1
    [squeue] = runner.tool_calls("squeue")
    assert squeue[squeue.index("-j") + 1] == "999997,999998,999999"
    assert "--states=all" in squeue


def test_snapshot_is_reused_within_max_age() -> None:
    mon = JobMonitor()
    mon.states(["999998", "999999"])
    assert mon.states(["999999"], max_age=3600) == {"999999": None}
    assert mon.squeue_calls == 1  # answered from the snapshot
    mon.states(["999999"], max_age=0)
    assert mon.squeue_calls == 2
    mon.states(["999990"], max_age=3600)  # not in the snapshot: asked although the snapshot is fresh
    assert mon.squeue_calls == 3


def test_watched_jobs_ride_along() -> None:
    runner = Recorder()
    mon = JobMonitor(runner=runner)
    mon.watch(["999991", "999992"])
    mon.states(["999993"])
    squeue = runner.tool_calls("squeue")[-1]
    assert squeue[squeue.index("-j") + 1] == "999991,999992,999993"
    assert mon.states(["999991"], max_age=3600) == {"999991": None}
    assert mon.squeue_calls == 1
    mon.unwatch(["999991", "999992"])
    mon.states(["999993"])
    squeue = runner.tool_calls("squeue")[-1]
    assert squeue[squeue.index("-j") + 1] == "999993"


def test_disabled_accounting_is_asked_once() -> None:
    runner = Recorder()
    mon = JobMonitor(runner=runner)
    mon.lookup(["999999"])
    # tests/infra/slurm.sh's cluster runs without accounting (AccountingStorageType=accounting_storage/none).
    assert mon.sacct_available is False, runner.tool_calls("sacct")
    assert len(runner.tool_calls("sacct")) == 1
    assert mon.lookup(["999998"]) == {"999998": None}
    assert len(runner.tool_calls("sacct")) == 1


def test_held_job(held_job: str) -> None:
    mon = JobMonitor()
    state = mon.lookup([held_job])[held_job]
    assert state is not None
    assert (state.job_id, state.state, state.reason, state.source, state.nodes) == (
        held_job, "PENDING", "JobHeldUser", "squeue", None)
    assert state.run_status == SCHEDULED
    assert not state.terminal


def test_held_job_and_gone_ids_in_one_call(held_job: str) -> None:
    mon = JobMonitor()
    result = mon.states(["999999", held_job, "999998"])
    assert result["999999"] is None and result["999998"] is None
    held = result[held_job]
    assert held is not None and held.state == "PENDING"
    assert mon.squeue_calls == 1


def test_parsers_read_the_real_slurm(held_job: str) -> None:
    from mltf_flow.slurm.query import _SQUEUE_FORMAT

    out = subprocess.run(["squeue", "-h", "--states=all", "-j", held_job, "-o", _SQUEUE_FORMAT],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert parse_squeue(out) == {held_job: JobState(held_job, "PENDING", reason="JobHeldUser", source="squeue")}
    out = subprocess.run(["scontrol", "show", "job", "-o", held_job], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    state = parse_scontrol(out)
    assert state is not None
    assert (state.job_id, state.state, state.reason, state.exit_code, state.source) == (
        held_job, "PENDING", "JobHeldUser", 0, "scontrol")


def test_cancelled_job_reads_killed_until_slurm_forgets_it(held_job: str) -> None:
    subprocess.run(["scancel", held_job], capture_output=True, timeout=60, check=True)
    seen: list[JobState] = []

    def forgotten() -> bool:
        state = JobMonitor().lookup([held_job])[held_job]
        if state is not None:
            seen.append(state)
        return state is None

    # SLURM lists it as CANCELLED until MinJobAge (2 s on the CI cluster) has passed, then forgets it.
    wait_until(forgotten, 60, f"SLURM to forget cancelled job {held_job}", interval=0.1)
    assert seen, f"job {held_job} was gone at the first lookup: is MinJobAge still 2 s (tests/infra/slurm.sh)?"
    for state in seen:  # never pending or running once cancelled
        assert (state.job_id, state.state, state.run_status, state.terminal) == (held_job, "CANCELLED", KILLED, True)
    assert seen[0].exit_code == 0  # from scontrol (squeue shows no exit code) while the job is remembered


def test_job_state_now() -> None:
    assert job_state_now("999999") is None


def test_why_a_job_waits_reads_as_the_console_shows_it(held_job: str) -> None:
    # What "waiting for N SLURM workers of profile ...: <this>" says (mltf_flow.clusters.session).
    assert describe_jobs([held_job, "999999"]) == [f"job {held_job} PENDING (JobHeldUser)"]
