"""Steps on Dask clusters from profiles: LocalCluster (embedded default) and real SLURM jobs from the
single-node test cluster (tests/infra/slurm.sh). No job may outlive the `luigi` process that made it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import (
    REPO_PROFILES,
    assert_quiet_console,
    git_project,
    no_worker_jobs,
    popen,
    read_until,
    run_luigi,
    run_mltf,
    wait_until,
    worker_jobs,
)
from tests.integration.ddp_checks import assert_ddp_run
from tests.integration.mlflow_queries import runs, sqlite_uri, step_runs

pytestmark = pytest.mark.slow
PROJECTS = Path(__file__).parent / "projects"


def store() -> str:
    return sqlite_uri(os.environ["MLTF_FLOW_WORK_DIR"])


@pytest.mark.slurm
def test_example_pipeline_on_slurm_workers(jet_sample: Path, tmp_path: Path) -> None:
    proc = popen("--module", "pipelines", "Train", "--profile", "slurm-ci", "--dataset", str(jet_sample),
                 "--epochs", "1")
    seen = wait_until(worker_jobs, 60, "the features workers to appear in squeue")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert seen  # the workers were real SLURM jobs while the pipeline ran
    # Its console: no Python warning (two clusters ask for dashboard port 8787: ours says where the second one
    # went), no Dask INFO line (closing the clusters after Luigi's summary says nothing).
    assert_quiet_console(out)
    assert "(port 8787 was in use)" in out, out
    no_worker_jobs()
    (features,) = step_runs(store(), "features")
    (train,) = step_runs(store(), "train")
    assert features.data.tags["mltf.profile"] == "slurm-ci"
    assert len(features.data.tags["mltf.slurm_job_ids"].split(",")) == 2
    assert train.data.tags["mltf.profile"] == "slurm-ci-gpu"  # Train needs a GPU: the profile's gpu_profile
    assert train.data.tags["mltf.launcher"] == "ddp" and train.data.tags["mltf.slurm_job_ids"]
    # 2-rank DDP across the GPU profile's 2 SLURM jobs: one rank per job, identical weights.
    assert_ddp_run(store(), train, tmp_path)
    placement = json.loads(train.data.tags["mltf.ddp.ranks"])
    assert len({p["slurm_job"] for p in placement}) == 2 and all(p["slurm_job"] for p in placement)
    assert [p["local_rank"] for p in placement] == [0, 0]  # each job is its own node
    for run in (features, train):
        assert run.data.tags["mltf.dask_dashboard"].startswith("http://127.0.0.1:")
        assert run.data.tags["mltf.complete"] == "true"
    # The description names each worker job and its log, which is where it says.
    for job in features.data.tags["mltf.slurm_job_ids"].split(","):
        line = next(x for x in features.data.tags["mlflow.note.content"].splitlines() if f"SLURM job {job}:" in x)
        assert Path(line.split("`")[1]).is_file(), line


def _flaky(tmp_path: Path, run_on: str = "driver") -> Path:
    project = git_project(PROJECTS / "flaky", tmp_path / "flaky")
    if run_on != "driver":
        spec = project / "pipeline.yaml"
        spec.write_text(spec.read_text() + f"    run_on: {run_on}\n")
    return project


@pytest.mark.slurm
def test_failing_step_on_slurm_cancels_the_workers(tmp_path: Path) -> None:
    project = _flaky(tmp_path)
    result = run_luigi("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project),
                       "--run-step", "main", "--overrides", '{"mode": "exit3"}', "--profile", "slurm-ci")
    assert result.returncode == 30, result.output
    no_worker_jobs()


@pytest.mark.slurm
def test_sigint_mid_step_on_a_slurm_worker(tmp_path: Path) -> None:
    project = _flaky(tmp_path, run_on="worker")
    proc = popen("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project), "--run-step",
                 "main", "--overrides", '{"mode": "hang"}', "--profile", "slurm-ci")
    read_until(proc, "[main@worker] READY")
    assert worker_jobs()
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, out
    (run,) = [r for r in runs(store(), "flaky") if r.data.tags.get("mltf.role") == "step"]
    assert run.info.status == "KILLED"
    no_worker_jobs()


@pytest.mark.parametrize("profile", ["local", pytest.param("slurm-ci", marks=pytest.mark.slurm)])
def test_two_independent_branches_run_in_parallel(profile: str, tmp_path: Path) -> None:
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    overrides = {"left.rendezvous": str(rendezvous), "right.rendezvous": str(rendezvous)}
    result = run_luigi("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(PROJECTS / "branches"),
                       "--run-step", "join", "--overrides", json.dumps(overrides), "--profile", profile,
                       "--workers", "2")
    assert result.returncode == 0, result.output
    done = {r.data.tags["mltf.step"] for r in runs(store(), "branches") if r.data.tags.get("mltf.complete") == "true"}
    assert done == {"left", "right", "join"}
    parents = [r for r in runs(store(), "branches") if r.data.tags.get("mltf.role") == "pipeline"]
    assert len(parents) == 1  # forked task processes share one parent run
    # The picture drawn at exit by the main process, whose task objects never saw their steps run (forked
    # workers ran them): every step ran.
    from mlflow.tracking import MlflowClient

    svg = ET.fromstring(Path(MlflowClient(store()).download_artifacts(
        parents[0].info.run_id, "mltf/pipeline.svg", str(tmp_path))).read_text())
    states = {g.get("data-step"): g.get("data-state") for g in svg.iter("{http://www.w3.org/2000/svg}g")}
    assert states == {"left": "ran", "right": "ran", "join": "ran"}, states
    if profile.startswith("slurm"):
        no_worker_jobs()


def _bad_profiles(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "bad-profiles.yaml"
    path.write_text(
        "ci-gpu8:\n  extends: slurm-ci\n  gpus_per_node: 8\n  cores: 8\n  gpu_profile: null\n"
        "ci-nopart:\n  extends: slurm-ci\n  partition: nosuch\n"
    )
    return {"MLTF_FLOW_PROFILE_FILES": f"{REPO_PROFILES}{os.pathsep}{path}"}  # slurm-ci is the repository's


@pytest.mark.parametrize(("profile", "message"), [
    ("ci-gpu8", "Requested node configuration is not available"),
    ("ci-nopart", "invalid partition specified: nosuch"),
])
@pytest.mark.slurm
def test_slurm_rejection_is_reported_before_anything_runs(
    tmp_path: Path, jet_sample: Path, profile: str, message: str
) -> None:
    start = time.monotonic()
    result = run_luigi("--module", "pipelines", "Train", "--dataset", str(jet_sample), "--profile", profile,
                       env=_bad_profiles(tmp_path))
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.output  # an input error (the profile): one line, nothing ran
    assert message in result.output and f"profile {profile!r}" in result.output
    assert "Traceback" not in result.output
    # A bound against hanging until the worker-start timeout, not a performance check.
    assert elapsed < 60
    assert not runs(store()) and not worker_jobs()


def test_attach_to_an_existing_scheduler(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    from mltf_flow.clusters.dashboard import local_cluster_options

    with LocalCluster(n_workers=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      **local_cluster_options(None)) as cluster:
        profiles = tmp_path / "attach.yaml"
        profiles.write_text(
            f"attached:\n  extends: local\n  workers: 1\n  scheduler_address: {cluster.scheduler_address}\n"
        )
        gate = tmp_path / "gate"
        gate.touch()
        result = run_luigi("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir",
                           str(PROJECTS / "branches"), "--run-step", "gate", "--overrides",
                           json.dumps({"gate_file": str(gate)}), "--profile", "attached",
                           env={"MLTF_FLOW_PROFILE_FILES": str(profiles)})
        assert result.returncode == 0, result.output
        (run,) = [r for r in runs(store(), "branches") if r.data.tags.get("mltf.step") == "gate"]
        assert run.data.tags["mltf.dask_scheduler"] == cluster.scheduler_address
        with Client(cluster.scheduler_address, set_as_default=False) as client:  # not closed by the pipeline
            assert client.submit(sum, [2, 3], pure=False).result(timeout=30) == 5


@pytest.mark.slurm
def test_render_prints_the_job_script_without_submitting() -> None:
    before = set(worker_jobs())
    result = run_mltf("render", "--profile", "slurm-ci-gpu")
    assert result.returncode == 0, result.output
    assert "#SBATCH --gres=gpu:1" in result.stdout and "--resources GPU=1" in result.stdout
    assert set(worker_jobs()) == before
    assert shutil.which("sbatch")


@pytest.mark.slurm
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_luigi_process_leaves_no_slurm_jobs(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM: an orderly exit closes the clusters. SIGKILL: nothing runs in the Luigi process, but the
    keeper dies with it (PR_SET_PDEATHSIG) and cancels the jobs on its way out."""
    project = _flaky(tmp_path)
    proc = popen("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project), "--run-step",
                 "main", "--overrides", '{"mode": "hang"}', "--profile", "slurm-ci")
    read_until(proc, "[main] READY")
    assert worker_jobs()
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    no_worker_jobs()
    if sig == signal.SIGTERM:
        (run,) = [r for r in runs(store(), "flaky") if r.data.tags.get("mltf.role") == "step"]
        assert run.info.status == "KILLED"
