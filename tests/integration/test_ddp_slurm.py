"""Distributed training on the single-node SLURM cluster: a rank whose SLURM job is cancelled mid-training
fails the step within 60 s with every rank's status, leaves no rank running, and a retry resumes from the
last checkpoint in the same MLflow run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import git_project, no_worker_jobs, popen, read_until, run_luigi
from tests.integration.ddp_checks import assert_ddp_run, metric_steps
from tests.integration.mlflow_queries import runs, sqlite_uri
from tests.integration.test_ddp import PROJECT, leftover_ranks

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def test_cancelled_slurm_job_fails_the_step_and_a_retry_resumes(tmp_path: Path) -> None:
    project = git_project(PROJECT, tmp_path / "ddp")
    work = os.environ["MLTF_FLOW_WORK_DIR"]
    hold = {"MLTF_TEST_HOLD_EPOCH": "1", "MLTF_TEST_HOLD_FILE": str(tmp_path / "never")}
    args = ("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project), "--run-step",
            "resumable", "--profile", "slurm-ci")
    proc = popen(*args, env=hold)
    try:
        read_until(proc, "rank 0 HOLDING after epoch 1")  # rank 0 saved the epoch-1 checkpoint
        (run,) = [r for r in runs(sqlite_uri(work), "ddp_demo") if r.data.tags.get("mltf.step") == "resumable"]
        placement = json.loads(run.data.tags["mltf.ddp.ranks"])
        victim = placement[1]["slurm_job"]
        assert victim and victim != placement[0]["slurm_job"]
        cancelled = time.monotonic()
        subprocess.run(["scancel", victim], check=True)
        out = proc.communicate(timeout=60)[0]  # the whole invocation ends well within 60 s
        assert time.monotonic() - cancelled < 60
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 30, out[-4000:]
    assert f"rank 1 lost: its Dask worker disappeared (SLURM job {victim} ended" in out, out[-4000:]
    assert re.search(r"rank 0 \(.*SLURM job \d+.*\): (killed by signal \d+|exited with code -?\d+) \(stopped after "
                     r"rank 1 failed\)", out), out[-4000:]
    (failed,) = [r for r in runs(sqlite_uri(work), "ddp_demo") if r.data.tags.get("mltf.step") == "resumable"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mltf.checkpoint.epoch"] == "1"
    assert not leftover_ranks("resumable.py")
    no_worker_jobs()

    retry = run_luigi(*args)
    assert retry.returncode == 0, retry.output
    (resumed,) = [r for r in runs(sqlite_uri(work), "ddp_demo") if r.data.tags.get("mltf.step") == "resumable"]
    assert resumed.info.run_id == failed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["mltf.resumed_from_epoch"] == "1"
    assert metric_steps(sqlite_uri(work), resumed.info.run_id, "loss") == [0, 1, 2, 3, 4]
    assert_ddp_run(sqlite_uri(work), resumed, tmp_path)
    no_worker_jobs()
