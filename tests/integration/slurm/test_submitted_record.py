"""SlurmSubmittedRun (mltf_flow.backend.submitted) ends its wait on the job's record: once the wrapper wrote
``status.json`` saying it recorded the run FINISHED on MLflow, ``wait()`` returns without waiting for SLURM to
report the job over. Only that record does: another job's, an unfinished one, or a failure (whose final word
SLURM may still change) leave the job's state to SLURM. The job here is a real one that SLURM holds, so only
the record can end the wait; the run is in a real sqlite store."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.backend.record import ENDED, RUNNING, JobRecord
from tests.helpers import wait_until

pytestmark = pytest.mark.slurm


@pytest.fixture
def held_job() -> Iterator[str]:
    """A real job that stays PENDING (held): it uses no resources and is cancelled afterwards."""
    proc = subprocess.run(["sbatch", "--parsable", "--hold", "--job-name=mltf-held-record", "--output=/dev/null",
                           "--wrap", "true"], capture_output=True, text=True, timeout=60, check=True)
    job_id = proc.stdout.strip().split(";")[0]
    yield job_id
    subprocess.run(["scancel", job_id], capture_output=True, timeout=60)


def _finished_run(uri: str) -> tuple[Any, str]:
    """A run the wrapper ended as it does for exit code 0: FINISHED, then mltf.complete."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("record-wait")).info.run_id
    client.set_terminated(run_id, "FINISHED")
    client.set_tag(run_id, "mltf.complete", "true")
    return client, run_id


def _listed(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() == "PENDING"


def test_wait_returns_on_the_wrappers_record_while_slurm_still_holds_the_job(tmp_path: Path, held_job: str) -> None:
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    client, run_id = _finished_run(uri)
    sub = SlurmSubmittedRun(run_id, held_job, tmp_path, uri, poll_interval=0.2, max_poll_interval=0.5)
    returned: list[bool] = []
    waiter = threading.Thread(target=lambda: returned.append(sub.wait()), daemon=True)
    waiter.start()
    wait_until(lambda: client.get_run(run_id).data.tags.get("mltf.slurm.state") == "PENDING", 30,
               "wait() to have seen the job pending in SLURM")
    assert not returned  # no record yet: SLURM says the job is pending
    JobRecord(held_job, ENDED, "FINISHED", 0, "COMPLETED", tracked=True, host="node").write(tmp_path / "status.json")
    wait_until(lambda: returned, 10, "wait() to return on the job's record")
    assert returned == [True] and sub.get_status() == "FINISHED"
    assert _listed(held_job)  # SLURM still holds the job: the record alone ended the wait


@pytest.mark.parametrize("record", [
    JobRecord("1", ENDED, "FINISHED", 0, "COMPLETED", tracked=True),  # another job's (an earlier segment's)
    JobRecord("", ENDED, "FINISHED", 0, "COMPLETED", tracked=False),  # the wrapper could not tell MLflow
    JobRecord("", RUNNING),  # the wrapper is still running
    JobRecord("", ENDED, "FAILED", 137, "FAILED", "killed by SIGKILL", tracked=True),  # SLURM may say OOM
], ids=["other-job", "untracked", "running", "failed"])
def test_any_other_record_leaves_the_state_to_slurm(tmp_path: Path, held_job: str, record: JobRecord) -> None:
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    _, run_id = _finished_run(uri)
    job = record.job_id or held_job
    JobRecord(**{**record.__dict__, "job_id": job}).write(tmp_path / "status.json")
    sub = SlurmSubmittedRun(run_id, held_job, tmp_path, uri, poll_interval=0.2)
    assert sub.get_status() == "SCHEDULED"  # SLURM's word: the job is held, pending
