"""`mlflow run --backend mltf`: the real `mlflow` CLI and Python API, a real `mlflow server`, the real SLURM of
tests/infra/slurm.sh. Each way a job can end (exit 0, exit 3, time limit, scancel, SubmittedRun.cancel, its
wrapper killed) must end its MLflow run with SLURM's state and reason, and nothing may crash after SLURM
forgets the job (MinJobAge=2 on the CI cluster: jobs leave squeue seconds after they end)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.staging.local import stage_local
from mltf_flow.staging.manifest import write_manifest
from mltf_flow.staging.uri import parse_dataset_uri
from tests.helpers import (
    BIN,
    EXAMPLE,
    REPO,
    MlflowServer,
    Result,
    make_wheel,
    run_cmd,
    run_luigi,
    run_mltf,
    wait_until,
)
from tests.integration.mlflow_queries import client, runs

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.slurm]
PROJECTS = Path(__file__).parent / "projects"
FLAKY = PROJECTS / "flaky"
FAST = {"poll_interval": 0.5, "max_poll_interval": 2.0}
SECRET = "tok-81c4d2e7"


@pytest.fixture
def backend(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment of a user on the login node: a tracking server, the site's profiles."""
    import mlflow

    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLTF_FLOW_PROFILE_FILES": str(REPO / "configs" / "profiles.yaml")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(mlflow_server.uri)
    yield env
    mlflow.set_tracking_uri(None)


def mlflow_run(*args: str, env: dict[str, str]) -> Result:
    return run_cmd([str(BIN / "mlflow"), "run", *args], env=env, timeout=300)


def submitted(result: Result) -> tuple[str, str]:
    """(run id, job id) from what `mlflow run --backend mltf` printed."""
    match = re.search(r"submitted SLURM job (\d+) for MLflow run ([0-9a-f]{32})", result.output)
    assert match, result.output
    return match.group(2), match.group(1)


def ended(uri: str, run_id: str) -> Any:
    """The run once its job is over (the script ends its own run FINISHED before the wrapper's verdict, so
    the run's status alone does not say the job ended): waited for as users do, through SubmittedRun."""
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    SlurmSubmittedRun.from_run(run_id, uri, poll_interval=0.5, max_poll_interval=2.0).wait()
    return client(uri).get_run(run_id)


def wrapper_recorded(run: Any) -> bool:
    """The job's wrapper itself (not a later poller) gave the run its final status."""
    record = json.loads((Path(run.data.tags["mltf.slurm.job_dir"]) / "status.json").read_text())
    return bool(record["phase"] == "ended" and record["tracked"] and record["status"] == run.info.status)


def in_queue(job_id: str) -> bool:
    """squeue lists the job as pending, running or completing (what "in the queue" means to users)."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def slurm_remembers(job_id: str) -> bool:
    """The controller still knows the job in any state (it forgets it MinJobAge after the end)."""
    proc = subprocess.run(["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def queued() -> set[str]:
    """Ids of every job SLURM knows now (the module's time-limit job among them)."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"], capture_output=True, text=True).stdout
    return set(out.split())


def project_run(entry_point: str, parameters: dict[str, Any], config: dict[str, Any], experiment: str,
                project: Path = FLAKY, **kwargs: Any) -> Any:
    import mlflow

    return mlflow.projects.run(str(project), entry_point, parameters=parameters, backend="mltf",
                               backend_config={**FAST, **config}, env_manager="local", synchronous=False,
                               experiment_name=experiment, **kwargs)


def artifact_names(uri: str, run_id: str, path: str = "mltf") -> set[str]:
    return {Path(a.path).name for a in client(uri).list_artifacts(run_id, path)}


@pytest.fixture(scope="module", autouse=True)
def time_limit_job(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A job that runs into its 1-minute limit (SLURM kills it 60-90 s after it starts): submitted when this
    module starts, so the other tests run meanwhile; the last test of the module waits for its end."""
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLTF_FLOW_PROFILE_FILES": str(REPO / "configs" / "profiles.yaml"),
           "MLTF_FLOW_WORK_DIR": str(tmp_path_factory.mktemp("time-limit") / "work")}
    config = json.dumps({"profile": "slurm-ci", "time": "00:01:00", **FAST})
    result = mlflow_run("--backend", "mltf", "-c", config, "--env-manager", "local", "--experiment-name",
                        "backend-timeout", "-e", "main", "-P", "mode=hang", str(FLAKY), env=env)
    assert result.returncode == 0, result.output
    run_id, job_id = submitted(result)
    _KEEP.add(job_id)
    yield run_id
    subprocess.run(["scancel", job_id], capture_output=True)  # a -k selection that never waited for it


_KEEP: set[str] = set()


@pytest.fixture(autouse=True)
def _no_job_left() -> Iterator[None]:
    """A test that fails half-way must not leave its jobs holding the CI node's CPUs for the tests after it."""
    before = queued()
    yield
    left = queued() - before - _KEEP
    if left:
        subprocess.run(["scancel", *sorted(left)], capture_output=True)


# -- the talk's user story --------------------------------------------------------------------------------------


def test_cli_trains_the_example_with_our_profile_and_mlflow_slurm_configs(
        backend: dict[str, str], mlflow_server: MlflowServer, jet_sample: Path, tmp_path: Path) -> None:
    uri = mlflow_server.uri
    manifest = tmp_path / "manifest.json"
    write_manifest(manifest, stage_local(parse_dataset_uri(str(jet_sample))))
    ours = tmp_path / "profile.json"
    ours.write_text(json.dumps({"profile": "slurm-ci", **FAST}))
    result = mlflow_run("--backend", "mltf", "--backend-config", str(ours), "--env-manager", "local",
                        "--experiment-name", "backend-e2e", "-e", "features", "-P", f"manifest={manifest}",
                        str(EXAMPLE), env=backend)
    assert result.returncode == 0, result.output  # asynchronous: the CLI returns once the job is queued
    features_id, _ = submitted(result)
    features = ended(uri, features_id)
    assert features.info.status == "FINISHED" and features.data.tags["mltf.complete"] == "true", features.data.tags

    # The same project with an unchanged mlflow-slurm slurm_config.json: only the backend name differs.
    script_copy = tmp_path / "sbatch-train.sh"
    ncsa = tmp_path / "slurm_config.json"
    ncsa.write_text(json.dumps({
        "partition": "debug", "account": None, "gpus_per_node": 1, "mem": "2G", "time": "00:20:00", "nodes": 1,
        "modules": [], "environment": ["MLTF_TEST_MARK=from-environment"], "exports": ["HOME"], "exclusive": False,
        "sbatch-script-file": str(script_copy),
    }))
    result = mlflow_run("--backend", "mltf", "--backend-config", str(ncsa), "--env-manager", "local",
                        "--experiment-name", "backend-e2e", "-e", "train", "-P",
                        f"features=runs:/{features_id}/features.mltft", "-P", "epochs=2", str(EXAMPLE), env=backend)
    assert result.returncode == 0, result.output
    train_id, job_id = submitted(result)
    train = ended(uri, train_id)
    tags = train.data.tags
    assert train.info.status == "FINISHED" and tags["mltf.complete"] == "true", tags
    assert wrapper_recorded(train) and wrapper_recorded(features)
    assert tags["mltf.exit_code"] == "0" and tags["mltf.slurm.state"] == "COMPLETED"
    assert tags["mltf.slurm_job_ids"] == job_id and tags["mlflow.project.backend"] == "mltf"
    assert tags["mltf.step"] == "train" and len(tags["mltf.cache_key"]) == 64 and tags["mlflow.project.env"] == "local"
    assert "--gpus-per-node=1" in tags["mltf.slurm.request"] and "--mem=2G" in tags["mltf.slurm.request"]
    c = client(uri)
    assert len(c.get_metric_history(train_id, "val_loss")) == 2
    models = c.search_logged_models(experiment_ids=[train.info.experiment_id],
                                    filter_string=f"source_run_id = '{train_id}'")
    assert [m.name for m in models] == ["jet_tagger"]
    assert {"job.sh", "job-spec.json", f"slurm-{job_id}.out"} <= artifact_names(uri, train_id)
    # mlflow-slurm's keys reached the script, which also landed where sbatch-script-file asked.
    script = script_copy.read_text()
    assert "#SBATCH --gpus-per-node=1" in script and "export MLTF_TEST_MARK=from-environment" in script
    assert f"#SBATCH --chdir={EXAMPLE.resolve()}" in script  # the project, not the submit directory
    assert not in_queue(job_id)


# -- every way a job ends -----------------------------------------------------------------------------------------


def test_exit_3_fails_the_run_and_survives_slurm_forgetting_the_job(backend: dict[str, str],
                                                                     mlflow_server: MlflowServer) -> None:
    import mlflow
    from mlflow.exceptions import ExecutionException

    from mltf_flow.backend.submitted import SlurmSubmittedRun

    # Synchronous Python API: MLflow waits on our SubmittedRun and raises when wait() says False.
    with pytest.raises(ExecutionException, match="failed"):
        mlflow.projects.run(str(FLAKY), "main", parameters={"mode": "exit3"}, backend="mltf",
                            backend_config={"profile": "slurm-ci", **FAST}, env_manager="local", synchronous=True,
                            experiment_name="backend-exit3")
    (run,) = runs(mlflow_server.uri, "backend-exit3")
    tags = run.data.tags
    assert run.info.status == "FAILED" and "mltf.complete" not in tags  # MLflow alone would say FINISHED
    assert tags["mltf.exit_code"] == "3" and tags["mltf.slurm.state"] == "FAILED"
    assert tags["mltf.slurm.reason"] == "NonZeroExitCode" and "calibration file missing" in tags["mltf.error"]
    job_id = tags["mltf.slurm_job_ids"]
    wait_until(lambda: not slurm_remembers(job_id), 60, "SLURM to forget the job")
    late = SlurmSubmittedRun.from_run(run.info.run_id, mlflow_server.uri)
    assert late.get_status() == "FAILED" and late.wait() is False


def _running(sub: Any) -> None:
    log = sub.job_dir / f"slurm-{sub.job_id}.out"
    wait_until(lambda: log.exists() and "READY" in log.read_text(), 120, "the command to start in its job")


def test_scancel_kills_the_run_and_mltf_flow_job_reports_it(backend: dict[str, str],
                                                            mlflow_server: MlflowServer) -> None:
    config = json.dumps({"profile": "slurm-ci", **FAST})
    result = mlflow_run("--backend", "mltf", "-c", config, "--env-manager", "local", "--experiment-name",
                        "backend-scancel", "-e", "main", "-P", "mode=hang", "-P", f"api_token={SECRET}", str(FLAKY),
                        env=backend)
    assert result.returncode == 0, result.output
    run_id, job_id = submitted(result)
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    _running(SlurmSubmittedRun.from_run(run_id, mlflow_server.uri))
    subprocess.run(["scancel", job_id], check=True)
    waited = run_mltf("job", run_id, "--wait", env=backend)
    assert waited.returncode == 1, waited.output  # --wait exits 1 unless the run completed
    assert "KILLED" in waited.output and "CANCELLED" in waited.output
    run = client(mlflow_server.uri).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["mltf.slurm.state"] == "CANCELLED"
    # The secret parameter went to the job, and nowhere else.
    log = (Path(run.data.tags["mltf.slurm.job_dir"]) / f"slurm-{job_id}.out").read_text()
    assert "--api-token ***" in log
    for text in (log, json.dumps(run.data.tags), json.dumps(run.data.params), result.output,
                 (Path(run.data.tags["mltf.slurm.job_dir"]) / "job.sh").read_text(),
                 (Path(run.data.tags["mltf.slurm.job_dir"]) / "spec.json").read_text()):
        assert SECRET not in text


def test_submitted_run_cancel_removes_the_job_and_kills_the_run(backend: dict[str, str],
                                                                mlflow_server: MlflowServer) -> None:
    from mlflow.exceptions import ExecutionException

    # A run made beforehand (by a driver, a gateway) can be handed to the backend to fill.
    c = client(mlflow_server.uri)
    made = c.create_run(c.create_experiment("backend-cancel")).info.run_id
    sub = project_run("main", {"mode": "hang"}, {"profile": "slurm-ci", "run_id": made}, "backend-cancel")
    assert sub.run_id == made
    _running(sub)
    sub.cancel()
    assert not in_queue(sub.job_id)  # cancel() returns once SLURM has ended the job
    run = c.get_run(sub.run_id)
    assert run.info.status == "KILLED" and sub.get_status() == "KILLED" and sub.wait() is False
    assert run.data.tags["mltf.slurm.cancelled_by"].startswith("SubmittedRun.cancel()")
    assert run.data.params["mode"] == "hang"
    with pytest.raises(ExecutionException, match="already KILLED"):
        project_run("main", {"mode": "hang"}, {"profile": "slurm-ci", "run_id": made}, "backend-cancel")


def test_a_job_whose_wrapper_was_killed_is_resolved_once_slurm_forgot_it(backend: dict[str, str],
                                                                          mlflow_server: MlflowServer) -> None:
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    sub = project_run("main", {"mode": "hang"}, {"profile": "slurm-ci"}, "backend-sigkill")
    _running(sub)
    # SIGKILL: nothing can be recorded; the job's record still says the wrapper was running.
    wrapper = subprocess.run(["pgrep", "-f", f"mltf_flow.backend.wrapper {sub.job_dir}"], capture_output=True,
                             text=True).stdout.split()
    assert wrapper
    subprocess.run(["kill", "-9", *wrapper], check=True)
    wait_until(lambda: not slurm_remembers(sub.job_id), 60, "SLURM to forget the job")
    assert client(mlflow_server.uri).get_run(sub.run_id).info.status == "RUNNING"  # nobody told MLflow
    late = SlurmSubmittedRun.from_run(sub.run_id, mlflow_server.uri)
    assert late.get_status() == "FAILED" and late.wait() is False
    tags = client(mlflow_server.uri).get_run(sub.run_id).data.tags
    assert "without its wrapper finishing" in tags["mltf.error"]
    assert f"slurm-{sub.job_id}.out" in artifact_names(mlflow_server.uri, sub.run_id)


def test_a_requeued_job_runs_again_in_the_same_run(backend: dict[str, str], mlflow_server: MlflowServer,
                                                   tmp_path: Path) -> None:
    # What preemption with requeue or a node failure does to a job: stop it, queue it, start it over.
    project = tmp_path / "requeue"
    project.mkdir()
    (project / "MLproject").write_text("name: requeue\nentry_points:\n  main:\n    command: bash attempt.sh\n")
    (project / "attempt.sh").write_text('if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then echo READY; sleep 600; fi\n'
                                        'echo "attempt ${SLURM_RESTART_COUNT} done"\n')
    sub = project_run("main", {}, {"profile": "slurm-ci"}, "backend-requeue", project=project)
    _running(sub)
    subprocess.run(["scontrol", "requeue", sub.job_id], check=True)
    c = client(mlflow_server.uri)
    wait_until(lambda: c.get_run(sub.run_id).data.tags.get("mltf.slurm.state") == "REQUEUED", 60,
               "the first attempt's wrapper to record the requeue")
    requeued_at = int(time.time())
    assert c.get_run(sub.run_id).info.status == "SCHEDULED"  # queued again, not ended
    # SLURM holds a requeued job back for a while (reason BeginTime); let it start now.
    wait_until(lambda: subprocess.run(["squeue", "-h", "-j", sub.job_id, "-o", "%T"], capture_output=True,
                                      text=True).stdout.strip() == "PENDING", 60, "the requeued job to be pending")
    # In a later second than the requeue: slurmd revoked the job's credential when it killed the first attempt
    # (before the wrapper saw SIGTERM and tagged REQUEUED), and a credential made within that same second counts
    # as revoked ("Killing non-startable batch job: Job credential revoked"). SLURM's own hold-back avoids this.
    wait_until(lambda: int(time.time()) > requeued_at, 5, "the next second on the clock", interval=0.05)
    subprocess.run(["scontrol", "update", f"jobid={sub.job_id}", "StartTime=now"], check=True)
    assert sub.wait() is True
    run = c.get_run(sub.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mltf.slurm.restarts"] == "1"
    assert "attempt 1 done" in (sub.job_dir / f"slurm-{sub.job_id}.out").read_text()


def test_a_job_slurm_never_had_is_failed_not_a_crash(backend: dict[str, str], mlflow_server: MlflowServer,
                                                     tmp_path: Path) -> None:
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    c = client(mlflow_server.uri)
    run = c.create_run(c.create_experiment("backend-never"))
    sub = SlurmSubmittedRun(run.info.run_id, "99999999", tmp_path / "no-such-job", mlflow_server.uri,
                            poll_interval=0.2)
    assert sub.get_status() == "FAILED" and sub.wait() is False
    assert "without ever starting" in c.get_run(run.info.run_id).data.tags["mltf.error"]


# -- distributed training -----------------------------------------------------------------------------------------


def test_two_tasks_run_the_ddp_script_with_the_torchrun_contract(backend: dict[str, str],
                                                                 mlflow_server: MlflowServer) -> None:
    config = json.dumps({"profile": "slurm-ci-gpu", "ntasks": 2, "gres": "gpu:2", **FAST})
    result = mlflow_run("--backend", "mltf", "-c", config, "--env-manager", "local", "--experiment-name",
                        "backend-ddp", "-e", "plain", "-P", "epochs=2", str(PROJECTS / "ddp"), env=backend)
    assert result.returncode == 0, result.output
    run_id, job_id = submitted(result)
    run = ended(mlflow_server.uri, run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mltf.complete"] == "true", run.data.tags
    assert run.data.tags["mltf.slurm.tasks"] == "2"
    log = (Path(run.data.tags["mltf.slurm.job_dir"]) / f"slurm-{job_id}.out").read_text()
    # plain.py reads RANK/WORLD_SIZE/LOCAL_RANK and joins the group through MASTER_ADDR/MASTER_PORT (env://).
    found = dict(re.findall(r"rank (\d) local_rank \1 world 2 final weights sha256 ([0-9a-f]{64})", log))
    assert sorted(found) == ["0", "1"] and len(set(found.values())) == 1, log
    assert re.search(r"^0: mltf_flow: rank 0/2 local_rank 0 .* master \S+:\d+", log, re.M), log
    metrics = run.data.metrics
    assert any(k.startswith("system/rank-0/") for k in metrics) and any(k.startswith("system/rank-1/") for k in metrics)


def test_a_failing_rank_fails_the_job(backend: dict[str, str], mlflow_server: MlflowServer,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_TEST_FAIL_RANK", "1")
    monkeypatch.setenv("MLTF_TEST_FAIL_EPOCH", "1")
    sub = project_run("resumable", {"epochs": 3}, {"profile": "slurm-ci", "ntasks": 2}, "backend-ddp-fail",
                      project=PROJECTS / "ddp")
    # MLTF_TEST_FAIL_* reach the job through sbatch's environment (--export=ALL), like any user variable.
    assert sub.wait() is False
    run = client(mlflow_server.uri).get_run(sub.run_id)
    assert run.info.status == "FAILED" and run.data.tags["mltf.exit_code"] != "0"
    assert "injected failure on rank 1" in (sub.job_dir / f"slurm-{sub.job_id}.out").read_text()


# -- bad requests fail before anything is submitted --------------------------------------------------------------


def _nothing_submitted(uri: str, experiment: str, work: Path, before: set[str]) -> None:
    assert runs(uri, experiment) == []
    jobs = work / "jobs"
    assert not jobs.exists() or not [p for p in jobs.iterdir() if re.fullmatch(r"[0-9a-f]{32}", p.name)]
    assert queued() - before == set()


@pytest.mark.parametrize(("config", "message"), [
    ({"profile": "slurm-ci", "partition": "nosuch"}, "invalid partition"),
    ({"profile": "slurm-ci", "gres": "gpu:8"}, "Requested node configuration is not available"),
    ({"profile": "slurm-ci", "partiton": "debug"}, "did you mean 'partition'"),
    ({"profile": "slurm-ci", "time": "ten minutes"}, "key 'time'"),
    ({"profile": "local"}, "is a local profile"),
    ({"environment": ["MLFLOW_TRACKING_PASSWORD=hunter2"]}, "looks like a secret"),
])
def test_bad_configs_fail_before_submission(backend: dict[str, str], mlflow_server: MlflowServer,
                                            config: dict[str, Any], message: str, tmp_path: Path) -> None:
    from mlflow.exceptions import ExecutionException

    experiment = f"backend-bad-{abs(hash(json.dumps(config))) % 10**8}"
    before = queued()
    with pytest.raises(ExecutionException, match=re.escape(message)) as info:
        project_run("main", {"mode": "ok"}, config, experiment)
    assert "hunter2" not in str(info.value)
    _nothing_submitted(mlflow_server.uri, experiment, tmp_path / "work", before)


def test_bad_configs_on_the_command_line(backend: dict[str, str], mlflow_server: MlflowServer,
                                         tmp_path: Path) -> None:
    common = ["--env-manager", "local", "--experiment-name", "backend-bad-cli", "-e", "main", str(FLAKY)]
    before = queued()
    result = mlflow_run("--backend", "mltf", "-c", '{"profile": "slurm-ci", "gres": "gpu:8"}', *common, env=backend)
    assert result.returncode == 1 and "Requested node configuration is not available" in result.output
    assert "Traceback" not in result.output  # MLflow prints our ExecutionException as one line
    broken = tmp_path / "broken.json"
    broken.write_text('{"partition": "debug",, }')
    result = mlflow_run("--backend", "mltf", "-c", str(broken), *common, env=backend)
    assert result.returncode != 0 and str(broken) in result.output and "JSON" in result.output
    _nothing_submitted(mlflow_server.uri, "backend-bad-cli", tmp_path / "work", before)


# -- environments -------------------------------------------------------------------------------------------------


def test_virtualenv_is_built_in_the_job_once_and_reused(backend: dict[str, str], mlflow_server: MlflowServer,
                                                       tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels", "mltf_envprobe", "1.0", "ANSWER = 42\n")
    project = tmp_path / "envcheck"
    project.mkdir()
    (project / "MLproject").write_text("name: envcheck\npython_env: python_env.yaml\nentry_points:\n"
                                       "  main:\n    command: python probe.py\n")
    (project / "python_env.yaml").write_text(f'python: "3.11"\nbuild_dependencies: []\ndependencies: ["{wheel}"]\n')
    (project / "probe.py").write_text(
        "import sys\nimport mltf_envprobe\nfrom mltf_flow.ddp import rank\n"  # the job-side helpers are importable
        "print(f'PREFIX={sys.prefix} ANSWER={mltf_envprobe.ANSWER} RANK={rank()}')\n"
        "try:\n    import luigi\nexcept ImportError:\n    print('ISOLATED')\n")
    config = {"profile": "slurm-ci", "env_root": str(tmp_path / "envs"), **FAST}
    result = mlflow_run("--backend", "mltf", "-c", json.dumps(config), "--env-manager", "virtualenv",
                        "--experiment-name", "backend-venv", str(project), env=backend)
    assert result.returncode == 0, result.output
    import mlflow

    # Again, without an env manager: MLflow's default for a python_env project is virtualenv too.
    again = mlflow.projects.run(str(project), backend="mltf", backend_config=config, synchronous=False,
                                experiment_name="backend-venv")
    logs = []
    for run_id, job_id in (submitted(result), (again.run_id, again.job_id)):
        run = ended(mlflow_server.uri, run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mltf.complete"] == "true", run.data.tags
        assert run.data.tags["mlflow.project.env"] == "virtualenv"
        logs.append((Path(run.data.tags["mltf.slurm.job_dir"]) / f"slurm-{job_id}.out").read_text())
    (env_dir,) = [p for p in (tmp_path / "envs").iterdir() if p.is_dir()]
    assert f"PREFIX={env_dir} ANSWER=42 RANK=0" in logs[0] and "ISOLATED" in logs[0]
    # Built by one job, reused by the other: the two jobs start together, either may take the lock first.
    assert sorted("building environment" in log for log in logs) == [False, True]
    assert all("reusing environment" in log for log in logs if "building environment" not in log)


def test_render_prints_the_job_without_submitting(backend: dict[str, str], tmp_path: Path) -> None:
    result = run_mltf("render", "--backend-config", '{"profile": "slurm-ci-gpu", "nodes": 2}', str(PROJECTS / "ddp"),
                      "-e", "plain", "--env-manager", "local", env=backend)
    assert result.returncode == 0, result.output
    assert "#SBATCH --nodes=2" in result.output and "#SBATCH --ntasks-per-node=1" in result.output
    assert "#SBATCH --gres=gpu:1" in result.output and "exec " in result.output
    assert runs(backend["MLFLOW_TRACKING_URI"], "ddp_demo") == []


def test_interrupting_the_synchronous_api_cancels_the_job(backend: dict[str, str], mlflow_server: MlflowServer,
                                                           tmp_path: Path) -> None:
    # mlflow.projects.run(synchronous=True) calls cancel() on KeyboardInterrupt: here a SIGINT to a driver.
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import mlflow\n"
        f"mlflow.projects.run({str(FLAKY)!r}, 'main', parameters={{'mode': 'hang'}}, backend='mltf',\n"
        f"    backend_config={{'profile': 'slurm-ci', **{FAST!r}}}, env_manager='local', synchronous=True,\n"
        "    experiment_name='backend-sigint')\n")
    proc = subprocess.Popen([str(BIN / "python"), str(driver)], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "submitted SLURM job" in line:
            job_id = re.search(r"job (\d+)", line).group(1)  # type: ignore[union-attr]
            break
    wait_until(lambda: in_queue(job_id), 60, "the job to be queued")
    (run,) = wait_until(lambda: runs(mlflow_server.uri, "backend-sigint"), 60, "the run")
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    _running(SlurmSubmittedRun.from_run(run.info.run_id, mlflow_server.uri))
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=180)
    assert not in_queue(job_id)
    assert client(mlflow_server.uri).get_run(run.info.run_id).info.status in ("KILLED", "FAILED")


# -- with pipelines ------------------------------------------------------------------------------------------------


def test_a_pipeline_step_sees_the_same_job_as_in_progress_then_reuses_its_result(
        backend: dict[str, str], mlflow_server: MlflowServer) -> None:
    # The generic pipeline step for flaky's entry point has the cache key the backend computes for it.
    env = {**backend, "MLTF_FLOW_TRACKING_URI": mlflow_server.uri}
    step = ["--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(FLAKY), "--run-step", "main"]
    sub = project_run("main", {"mode": "hang"}, {"profile": "slurm-ci"}, "flaky")
    _running(sub)
    result = run_luigi(*step, "--overrides", '{"mode": "hang"}', env={**env, "MLTF_FLOW_WAIT_FOR_RUNNING": "false"})
    assert result.returncode == 30, result.output  # no second launch of what SLURM is running
    assert "already running with the same inputs" in result.output and f"SLURM job {sub.job_id}" in result.output
    sub.cancel()
    done = project_run("main", {"mode": "ok"}, {"profile": "slurm-ci"}, "flaky")
    assert done.wait() is True
    result = run_luigi(*step, "--overrides", '{"mode": "ok"}', env=env)
    assert result.returncode == 0 and "Did not run any tasks" in result.output, result.output


# -- last: the job submitted when the module started has had its minute --------------------------------------------


def test_a_job_past_its_time_limit_is_a_failed_run(backend: dict[str, str], mlflow_server: MlflowServer,
                                                   time_limit_job: str) -> None:
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    sub = SlurmSubmittedRun.from_run(time_limit_job, mlflow_server.uri, poll_interval=0.5, max_poll_interval=2.0)
    assert sub.wait() is False
    run = client(mlflow_server.uri).get_run(sub.run_id)
    tags = run.data.tags
    assert run.info.status == "FAILED", tags
    assert tags["mltf.slurm.state"] == "TIMEOUT" and tags["mltf.slurm.reason"] == "TimeLimit"
    assert "mltf.slurm.pre_timeout_signal_at" in tags  # --signal=B:USR1@N reached the wrapper first
    assert wrapper_recorded(run) and sub.get_status() == "FAILED"
