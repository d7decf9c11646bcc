"""Trainings longer than their SLURM time limit (issue 19): a 1-minute limit, a training of about two minutes of
epochs. It stops near each job's end after a checkpoint and continues in new jobs, in the same MLflow run, until
it is done: through ``mlflow run --backend mltf`` (the job's wrapper submits the next job) and as a pipeline DDP
step (the ranks' worker jobs are replaced). Every epoch's metric is there exactly once and the final weights are
those of an uninterrupted run. With ``max_restarts`` reached the run ends FAILED and leaves no job behind.

The three trainings run at once (the test node has room for all four jobs), so the test takes as long as the
slowest of them: a few minutes of SLURM time limits."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WriteProfiles
from tests.helpers import BIN, REPO, MlflowServer, git_project, no_worker_jobs, popen, run_cmd, run_luigi
from tests.integration.mlflow_queries import client, runs, sqlite_uri

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.slurm]
PROJECT = Path(__file__).parent / "projects" / "long"
# 21 epochs of 5 s: a job of a 1-minute limit, asked to stop 10 s before its end, holds at most 10 of them, so
# the training needs at least 3 jobs (2 continuations) whatever the machine's speed.
EPOCHS, EPOCH_SECONDS = 21, 5
LIMIT = {"time": "00:01:00", "pre_timeout_signal": 10, "poll_interval": 0.5, "max_poll_interval": 2.0}
LONG = {"extends": "slurm-ci-gpu", "walltime": "00:01:00", "lifetime": None, "lifetime_stagger": None,
        "pre_timeout_signal": 10}
PROFILES = {"slurm-long": LONG, "slurm-long-capped": {**LONG, "max_restarts": 1}}


def _sha(output: str) -> str:
    found = re.findall(r"rank 0 final weights sha256 ([0-9a-f]{64})", output)
    assert found, output[-3000:]
    return str(found[-1])


def _reference(tmp_path: Path, world: int) -> str:
    """The weights of the same training, uninterrupted and without the pauses (which change no weight)."""
    uri = f"sqlite:///{tmp_path}/reference-{world}.db"
    run = client(uri).create_run(client(uri).create_experiment(f"reference-{world}"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run.info.run_id}
    for name in [k for k in env if k.startswith("SLURM_")]:
        del env[name]
    script = ["long.py", "--epochs", str(EPOCHS), "--epoch-seconds", "0"]
    args = [str(BIN / "python"), *script] if world == 1 else \
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(world), *script]
    proc = subprocess.run(args, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return _sha(proc.stdout)


def _backend_run(project: Path, uri: str, experiment: str, **config: Any) -> str:
    """`mlflow run --backend mltf` as a user types it; returns the run id (the CLI returns once submitted)."""
    env = {"MLFLOW_TRACKING_URI": uri, "MLTF_FLOW_PROFILE_FILES": str(REPO / "configs" / "profiles.yaml")}
    result = run_cmd([str(BIN / "mlflow"), "run", "--backend", "mltf", "-c",
                      json.dumps({"profile": "slurm-ci", **LIMIT, **config}), "--env-manager", "local", "-e", "long",
                      "-P", f"epochs={EPOCHS}", "-P", f"epoch_seconds={EPOCH_SECONDS}", "--experiment-name",
                      experiment, str(project)], env=env, timeout=300)
    match = re.search(r"submitted SLURM job \d+ for MLflow run ([0-9a-f]{32})", result.output)
    assert result.returncode == 0 and match, result.output[-3000:]
    return match.group(1)


def _wait(uri: str, run_id: str) -> Any:
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    SlurmSubmittedRun.from_run(run_id, uri, poll_interval=0.5, max_poll_interval=2.0).wait()
    return client(uri).get_run(run_id)


def _queued(job_ids: list[str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


def _assert_continued(uri: str, run: Any, reference: str, first_segments: int = 0) -> None:
    """One run, FINISHED after >= 3 segments (counted afresh after ``first_segments`` of a failed attempt), every
    epoch's metric once, the uninterrupted run's weights."""
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags.get("mltf.complete") == "true", tags
    segments = int(tags["mltf.segments"])
    assert first_segments + segments >= 3, tags
    for n in range(1, segments + 1):
        assert re.match(r"jobs? [\d,]+: ", tags[f"mltf.segment.{n}"]), tags
    assert "continued" in tags["mltf.segment.1"] and tags[f"mltf.segment.{segments}"].endswith("finished"), tags
    steps = sorted(m.step for m in client(uri).get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(EPOCHS)), steps
    assert tags["weights_sha256"] == reference


def test_a_training_past_the_time_limit_continues_in_the_same_run(mlflow_server: MlflowServer, tmp_path: Path,
                                                                   write_profiles: WriteProfiles) -> None:
    project = git_project(PROJECT, tmp_path / "long")
    write_profiles(PROFILES)
    work = os.environ["MLTF_FLOW_WORK_DIR"]
    backend = _backend_run(project, mlflow_server.uri, "long-backend")
    capped = _backend_run(project, mlflow_server.uri, "long-capped", max_restarts=1)
    step = ("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project), "--run-step", "long",
            "--overrides", json.dumps({"epochs": EPOCHS, "epoch_seconds": EPOCH_SECONDS}))
    # The pipeline first on a profile that allows one continuation: it fails after two segments; run again, the
    # step resumes that run (a time limit is a failure like any other) and continues until it is done.
    pipeline = popen(*step, "--profile", "slurm-long-capped")
    try:
        single, ranks = _reference(tmp_path, 1), _reference(tmp_path, 2)

        # max_restarts reached: FAILED, saying so, with no job left.
        failed = _wait(mlflow_server.uri, capped)
        assert failed.info.status == "FAILED", failed.data.tags
        assert "time limit, 2 segments" in failed.data.tags["mltf.error"], failed.data.tags
        jobs = failed.data.tags["mltf.slurm_job_ids"].split(",")
        assert len(set(jobs)) == 2 and not _queued(jobs), jobs

        # mlflow run --backend mltf: each segment a job of its own, all in the run.
        run = _wait(mlflow_server.uri, backend)
        _assert_continued(mlflow_server.uri, run, single)
        jobs = run.data.tags["mltf.slurm_job_ids"].split(",")
        assert len(set(jobs)) == int(run.data.tags["mltf.segments"]), run.data.tags
        assert not _queued(jobs)

        out = pipeline.communicate(timeout=900)[0]
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
    assert pipeline.returncode == 30 and "time limit, 2 segments" in out, out[-5000:]
    (stopped,) = [r for r in runs(sqlite_uri(work), "long_training") if r.data.tags.get("mltf.step") == "long"]
    assert stopped.info.status == "FAILED" and stopped.data.tags["mltf.segments"] == "2", stopped.data.tags
    no_worker_jobs()

    # The pipeline's DDP step again: its ranks resume the same run and continue on new worker jobs.
    again = run_luigi(*step, "--profile", "slurm-long")
    assert again.returncode == 0, again.output[-5000:]
    (run,) = [r for r in runs(sqlite_uri(work), "long_training") if r.data.tags.get("mltf.step") == "long"]
    assert run.info.run_id == stopped.info.run_id and run.data.tags["mltf.attempt"] == "2", run.data.tags
    _assert_continued(sqlite_uri(work), run, ranks, first_segments=2)
    no_worker_jobs()
