"""Distributed training through the launcher: a torchrun-style script unchanged, the same weights as under
torchrun, failures that stop every rank, and checkpoint-resume after a retry. LocalCluster here; the
SLURM variants are in test_ddp_slurm.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import BIN, git_project, run_luigi
from tests.integration.ddp_checks import assert_ddp_run, final_digests, metric_steps, rank_logs
from tests.integration.mlflow_queries import runs, sqlite_uri

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).parent / "projects" / "ddp"


def run_step(project: Path, step: str, *extra: str, env: dict[str, str] | None = None) -> Any:
    return run_luigi("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project),
                     "--run-step", step, *extra, env=env)


def step_runs(work: Path | str, step: str) -> list[Any]:
    return [r for r in runs(sqlite_uri(work), "ddp_demo") if r.data.tags.get("mltf.step") == step]


def leftover_ranks(script: str) -> list[int]:
    """Processes still running the given training script (there must be none after a step ended)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if script in cmd and "bash -c" not in cmd:
            found.append(proc.info["pid"])
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return git_project(PROJECT, tmp_path / "ddp")


def test_torchrun_script_unchanged_gives_the_weights_torchrun_gives(project: Path, tmp_path: Path) -> None:
    work = Path(os.environ["MLTF_FLOW_WORK_DIR"])
    result = run_step(project, "plain")
    assert result.returncode == 0, result.output
    (run,) = step_runs(work, "plain")
    uri = sqlite_uri(work)
    digest = assert_ddp_run(uri, run, tmp_path)
    logs = rank_logs(uri, run, tmp_path)
    for rank in (0, 1):  # the torchrun contract as the script read it (one LocalCluster = one node)
        assert f"rank {rank} local_rank {rank} world 2 final" in logs[rank]
    assert "loss" in run.data.metrics  # logged by rank 0, the run's owner

    # The same script, same parameters, under torchrun itself.
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/torchrun.db", "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "plain.py", "--epochs", "3", "--seed", "11",
         "--loader-workers", "1"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    under_torchrun = {int(m.group(1)): m.group(2)
                      for m in re.finditer(r"rank (\d+) .*final weights sha256 ([0-9a-f]{64})", proc.stdout)}
    assert under_torchrun == {0: digest, 1: digest}


def test_rank_that_raises_stops_all_ranks_then_retry_resumes(project: Path, tmp_path: Path,
                                                             store_template: Path) -> None:
    work = Path(os.environ["MLTF_FLOW_WORK_DIR"])
    fail = {"MLTF_TEST_FAIL_RANK": "1", "MLTF_TEST_FAIL_EPOCH": "2"}
    result = run_step(project, "resumable", env=fail)
    ended = time.time()
    assert result.returncode == 30, result.output
    out = result.output
    assert "rank 1 exited with code 1 first" in out
    assert re.search(r"rank 0 \(.*\): (killed by signal|exited with code)", out), out[-4000:]
    assert "RuntimeError: injected failure on rank 1 at epoch 2" in out
    (failed,) = step_runs(work, "resumable")
    found = re.search(r"INJECTED FAILURE at ([0-9.]+)", rank_logs(sqlite_uri(work), failed, tmp_path)[1])
    assert found, "rank 1 did not report the injected failure"
    injected = float(found.group(1))
    assert ended - injected < 60, f"the step took {ended - injected:.0f} s to fail after the rank raised"
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mltf.checkpoint.epoch"] == "1"
    assert not leftover_ranks("resumable.py")

    retry = run_step(project, "resumable")
    assert retry.returncode == 0, retry.output
    (resumed,) = step_runs(work, "resumable")  # the same run, continued: not a new one
    assert resumed.info.run_id == failed.info.run_id
    assert resumed.info.status == "FINISHED" and resumed.data.tags["mltf.complete"] == "true"
    assert resumed.data.tags["mltf.attempt"] == "2" and resumed.data.tags["mltf.resumed_from_epoch"] == "1"
    uri = sqlite_uri(work)
    assert metric_steps(uri, resumed.info.run_id, "loss") == [0, 1, 2, 3, 4]  # no epoch twice, none missing
    logs = rank_logs(uri, resumed, tmp_path / "after")
    assert "rank 1 resuming after epoch 1" in logs[1]
    digest = assert_ddp_run(uri, resumed, tmp_path / "check")

    # Resuming changes nothing: the same script run uninterrupted under torchrun ends with the same weights (a
    # reference without a second pipeline run; that the launcher gives torchrun's weights is the torchrun
    # test's). Its checkpoints go to a run in a store of its own.
    from mlflow.tracking import MlflowClient

    shutil.copyfile(store_template, tmp_path / "reference.db")  # migrated and empty (tests/conftest.py)
    reference_uri = f"sqlite:///{tmp_path}/reference.db"
    reference = MlflowClient(reference_uri)
    experiment = reference.create_experiment("reference", artifact_location=(tmp_path / "reference").as_uri())
    run_id = reference.create_run(experiment).info.run_id
    env = {**os.environ, "MLFLOW_TRACKING_URI": reference_uri, "MLFLOW_RUN_ID": run_id, "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "resumable.py"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming" not in proc.stdout  # a fresh run: nothing to resume from
    assert final_digests({0: proc.stdout, 1: proc.stdout}) == {0: digest, 1: digest}


def test_world_size_beyond_the_profile_is_refused_before_anything_runs(project: Path) -> None:
    spec = project / "pipeline.yaml"
    spec.write_text(spec.read_text().replace("    run_on: ddp\n", "    run_on: ddp\n    world_size: 3\n", 1))
    subprocess.run(["git", "-C", str(project), "commit", "-qam", "world 3"], check=True)
    result = run_step(project, "plain")
    assert result.returncode != 0
    assert "world_size=3 but profile 'local' gives 2 workers" in result.output
    assert not step_runs(os.environ["MLTF_FLOW_WORK_DIR"], "plain")



def _start_a_child() -> tuple[bool, int | None]:
    """Runs on a worker: is this worker process daemonic, and can it start a child (as DataLoader does)?"""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=abs, args=(-1,))
    child.start()
    child.join(timeout=60)
    return multiprocessing.current_process().daemon, child.exitcode


def test_local_cluster_workers_can_start_child_processes() -> None:
    import dask
    from distributed import Client

    from mltf_flow.clusters.keeper import _start_cluster

    before = dask.config.get("distributed.worker.daemon", default=True)
    _, cluster, credentials = _start_cluster("local")
    try:
        with Client(cluster.scheduler_address, set_as_default=False, security=credentials.security()) as client:
            assert client.submit(_start_a_child, pure=False).result(timeout=120) == (False, 0)
    finally:
        cluster.close()
        credentials.remove()
        dask.config.set({"distributed.worker.daemon": before})
