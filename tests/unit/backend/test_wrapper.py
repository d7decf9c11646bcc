"""The in-job wrapper as a real process, outside SLURM (job id ``local``), against a sqlite store: how each
way a command can end lands on the MLflow run and in the job's record. SLURM-side behaviour (scancel, time
limits, srun tasks) is in tests/integration/test_mlflow_backend.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from mltf_flow.backend.record import read_record
from mltf_flow.backend.spec import JobSpec
from tests.helpers import REPO, seed_store, wait_until

FLAKY = REPO / "tests" / "integration" / "projects" / "flaky"
BIN = str(Path(sys.executable).parent)
EXPERIMENT = "wrapper"


def _client(store: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store)


@pytest.fixture
def store(tmp_path: Path, store_template: Path) -> str:
    """A sqlite store of the test's own: a copy of the session's migrated one (tests/conftest.py; migrating
    costs seconds per store), with an experiment whose artifacts stay under ``tmp_path``."""
    seed_store(tmp_path, store_template)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _client(uri).create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    return uri


def _spec(tmp_path: Path, store: str, command: str, **changes: Any) -> JobSpec:
    client = _client(store)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    run = client.create_run(experiment_id, tags={"mltf.role": "step"})
    job_dir = tmp_path / "jobs" / run.info.run_id
    spec = JobSpec(run_id=run.info.run_id, experiment_id=experiment_id, tracking_uri=store, project_dir=str(FLAKY),
                   command=command, display_command=command.replace("@@MLTF_SECRET_API_TOKEN@@", "***"),
                   job_dir=str(job_dir), local_bin=BIN, fabric={"kind": "none"})
    spec = replace(spec, **changes)
    job_dir.mkdir(parents=True)
    spec.write(job_dir / "spec.json")
    return spec


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_wrapper_left() -> Iterator[None]:
    """A failing test must not leave its wrapper (and the command it holds) running."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _start(spec: JobSpec, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # The SLURM log of a job is the wrapper's stdout (#SBATCH --output): here a file of the same name.
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MLFLOW_"))}
    full.update(env or {})
    with open(spec.log_path("local"), "ab") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "mltf_flow.backend.wrapper",
                                 str(Path(spec.job_dir) / "spec.json"), *args],
                                stdout=log, stderr=subprocess.STDOUT, env=full, start_new_session=True)
    _STARTED.append(proc)
    return proc


def _finish(spec: JobSpec, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    proc = _start(spec, *args, env=env)
    code = proc.wait(timeout=120)
    run = _client(spec.tracking_uri).get_run(spec.run_id)
    return code, run, spec.log_path("local").read_text()


def test_exit_0_is_finished_and_complete(tmp_path: Path, store: str) -> None:
    spec = _spec(tmp_path, store, "python step.py --mode ok")
    code, run, log = _finish(spec)
    assert code == 0, log
    assert run.info.status == "FINISHED"
    assert run.data.tags["mltf.complete"] == "true" and run.data.tags["mltf.exit_code"] == "0"
    assert run.data.tags["mltf.slurm.state"] == "COMPLETED"
    # SLURM gives no reason for a completed job: no tag, never the word "None" (tags.py).
    assert "mltf.slurm.reason" not in run.data.tags and "None" not in run.data.tags.values()
    record = read_record(spec.record_path)
    assert record is not None and record.phase == "ended" and record.status == "FINISHED" and record.tracked
    artifacts = {a.path for a in _client(store).list_artifacts(spec.run_id, "mltf")}
    assert "mltf/slurm-local.out" in artifacts  # the job's log is kept with the run
    assert {a.path for a in _client(store).list_artifacts(spec.run_id)} >= {"result.txt"}  # the command's own


def test_exit_3_is_failed_although_mlflow_said_finished(tmp_path: Path, store: str) -> None:
    # step.py calls start_run() and sys.exit(3): MLflow's atexit hook ends that run FINISHED.
    spec = _spec(tmp_path, store, "python step.py --mode exit3")
    code, run, _ = _finish(spec)
    assert code == 3  # the job's exit code is the command's: SLURM reports FAILED, ExitCode 3
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["mltf.exit_code"] == "3" and "mltf.complete" not in tags
    assert tags["mltf.slurm.state"] == "FAILED" and tags["mltf.slurm.reason"] == "NonZeroExitCode"
    assert "boom: calibration file missing" in tags["mltf.error"]
    record = read_record(spec.record_path)
    assert record is not None and (record.status, record.exit_code) == ("FAILED", 3)


def test_a_run_the_command_failed_stays_failed_after_exit_0(tmp_path: Path, store: str) -> None:
    spec = _spec(tmp_path, store, "python -c \"import mlflow; mlflow.start_run(); mlflow.end_run('FAILED')\"")
    code, run, _ = _finish(spec)
    assert code == 0
    assert run.info.status == "FAILED" and "mltf.complete" not in run.data.tags
    assert "ended its MLflow run FAILED" in run.data.tags["mltf.error"]


def _hold(tmp_path: Path) -> str:
    # The command says where it is, then waits; its own USR1 trap proves a forwarded signal arrives.
    return (f"echo $$ > {tmp_path}/cmd.pid; trap 'echo USR1 >> {tmp_path}/usr1' USR1; echo READY; "
            "while true; do sleep 0.2; done")


def _ready(spec: JobSpec) -> None:
    # A line of its own: the wrapper's first line quotes the command, "echo READY" included.
    wait_until(lambda: "\nREADY\n" in spec.log_path("local").read_text(), 60, "the command to start")


def test_sigterm_stops_the_command_and_kills_the_run(tmp_path: Path, store: str) -> None:
    spec = _spec(tmp_path, store, _hold(tmp_path), kill_grace=3.0)
    proc = _start(spec)
    _ready(spec)
    child = int((tmp_path / "cmd.pid").read_text())
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 25  # inside SLURM's KillWait (30 s)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    run = _client(store).get_run(spec.run_id)
    assert run.info.status == "KILLED" and run.data.tags["mltf.slurm.state"] == "CANCELLED"
    assert run.data.tags["mltf.exit_code"] == "143" and "SIGTERM" in run.data.tags["mltf.error"]


def test_pre_timeout_warning_then_sigterm_is_a_timeout(tmp_path: Path, store: str) -> None:
    spec = _spec(tmp_path, store, _hold(tmp_path), kill_grace=3.0, forward_pre_timeout_signal=True)
    proc = _start(spec)
    _ready(spec)
    proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: (tmp_path / "usr1").exists(), 30, "the command to get the forwarded SIGUSR1")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    run = _client(store).get_run(spec.run_id)
    assert run.info.status == "FAILED"  # a time limit is a failure of the run, not a cancellation
    assert run.data.tags["mltf.slurm.state"] == "TIMEOUT" and run.data.tags["mltf.slurm.reason"] == "TimeLimit"
    assert "mltf.slurm.pre_timeout_signal_at" in run.data.tags
    assert "pre-timeout signal" in spec.log_path("local").read_text()


def test_pre_timeout_warning_is_not_forwarded_by_default(tmp_path: Path, store: str) -> None:
    # SIGUSR1's default action ends a process: a script that does not expect it must not get it.
    spec = _spec(tmp_path, store, "trap 'exit 7' USR1; echo READY; for i in $(seq 20); do sleep 0.05; done; "
                                  "echo survived")
    proc = _start(spec)
    _ready(spec)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=60) == 0
    assert "survived" in spec.log_path("local").read_text()


def test_a_command_that_stops_for_the_time_limit_with_no_restarts_left_fails_saying_so(tmp_path: Path,
                                                                                        store: str) -> None:
    # Exit code 75 after a checkpoint asks for a new job; max_restarts=0 allows none: FAILED, with the reason,
    # and nothing submitted (no sbatch is needed to get here).
    spec = _spec(tmp_path, store, "echo epoch 0 done; exit 75", max_restarts=0)
    code, run, log = _finish(spec)
    assert code == 75, log
    assert run.info.status == "FAILED"
    assert run.data.tags["mltf.error"].startswith("time limit, 1 segments:"), run.data.tags
    assert "max_restarts=0" in run.data.tags["mltf.error"]
    assert run.data.tags["mltf.segment.1"] == "job local: stopped: time limit (the command stopped after a " \
        "checkpoint); no restarts left"
    assert run.data.tags["mltf.slurm.state"] == "TIMEOUT"
    record = read_record(spec.record_path)
    assert record is not None and record.phase == "ended" and record.next_job is None


def test_the_command_gets_the_stop_margin(tmp_path: Path, store: str) -> None:
    spec = _spec(tmp_path, store, 'echo "margin=$MLTF_STOP_MARGIN"', stop_margin=42.0)
    code, _, log = _finish(spec)
    assert code == 0 and "margin=42" in log


def test_abort_records_a_failed_setup_line(tmp_path: Path, store: str) -> None:
    spec = _spec(tmp_path, store, "true")
    code, run, _ = _finish(spec, "--abort", "module load cuda/99 failed")
    assert code == 1
    assert run.info.status == "FAILED" and "module load cuda/99 failed" in run.data.tags["mltf.error"]
    record = read_record(spec.record_path)
    assert record is not None and record.phase == "ended" and record.reason == "module load cuda/99 failed"


def test_secret_parameters_reach_the_command_but_no_log_or_tag(tmp_path: Path, store: str) -> None:
    import hashlib

    secret = "tok-5f2e9a"
    # The placeholder is what argv holds; the Python process finds the value in its sys.argv (argv hook).
    check = "import hashlib, sys; print('got', hashlib.sha256(sys.argv[1].encode()).hexdigest())"
    spec = _spec(tmp_path, store, f'python -c "{check}" @@MLTF_SECRET_API_TOKEN@@ && echo token-ok')
    code, run, log = _finish(spec, env={"MLTF_SECRET_API_TOKEN": secret})
    assert code == 0 and "token-ok" in log
    assert "got " + hashlib.sha256(secret.encode()).hexdigest() in log
    assert secret not in log and "command: python -c" in log
    assert secret not in json.dumps(run.data.tags) and secret not in json.dumps(run.data.params)


def test_an_unreachable_tracking_server_leaves_the_outcome_in_the_record(tmp_path: Path, store: str) -> None:
    spec = _spec(tmp_path, store, "exit 4", tracking_uri="http://127.0.0.1:9")
    code = _start(spec, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}).wait(60)
    log = spec.log_path("local").read_text()
    assert code == 4  # the job still ends with the command's code
    record = read_record(spec.record_path)
    assert record is not None and (record.phase, record.status, record.exit_code, record.tracked) == (
        "ended", "FAILED", 4, False)
    assert "keeps its outcome" in log
