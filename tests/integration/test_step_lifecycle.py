"""How steps end: failures, sys.exit(3) inside start_run(), missing outputs, interruption, stale runs,
secrets, and retries after a fix. Uses tests/integration/projects/flaky through the generic pipeline
(`luigi --module mltf_flow.pipeline PipelineStep ...`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import BIN, REPO, git_project, read_until, run_luigi
from tests.integration.mlflow_queries import client, parents, runs, sqlite_uri

FLAKY = Path(__file__).parent / "projects" / "flaky"


@pytest.fixture
def flaky(tmp_path: Path) -> Path:
    return git_project(FLAKY, tmp_path / "flaky")


def run_flaky(project: Path, **overrides: str) -> tuple[int, str]:
    result = run_luigi(
        "--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project), "--run-step", "main",
        "--overrides", json.dumps(overrides),
    )
    return result.returncode, result.output


def store() -> str:
    return sqlite_uri(os.environ["MLTF_FLOW_WORK_DIR"])


def step_runs() -> list[Any]:
    return [r for r in runs(store(), "flaky") if r.data.tags.get("mltf.role") == "step"]


@pytest.mark.parametrize(("mode", "code", "stderr_line"), [
    ("exit3", 3, "boom: calibration file missing"),
    ("raise", 1, "RuntimeError: kaboom in user code"),
])
def test_failing_entry_point_fails_the_run_and_luigi(flaky: Path, mode: str, code: int, stderr_line: str) -> None:
    rc, out = run_flaky(flaky, mode=mode)
    assert rc == 30, out  # [retcode] task_failed
    assert f"step 'main' failed: its command exited with code {code}" in out
    assert stderr_line in out
    # On `luigi --module` too: the grouped report at exit, Luigi's traceback (not the script's) in the log file.
    assert f"[1] step 'main' (pipeline flaky): exit code {code}" in out
    assert "luigi/worker.py" not in out and "(StepFailed; traceback in " in out
    (run,) = step_runs()
    assert run.info.status == "FAILED"
    assert "mltf.complete" not in run.data.tags
    assert run.data.tags["mltf.exit_code"] == str(code)
    assert parents(store(), "flaky")[0].info.status == "FAILED"
    if mode != "exit3":
        return  # what follows a failure does not depend on how the script failed: checked once

    # The same inputs again: the failed run is not reused, the step runs (and fails) again.
    rc, _ = run_flaky(flaky, mode=mode)
    assert rc == 30
    # Fixed: completes, and a rerun does nothing.
    rc, out = run_flaky(flaky, mode="ok")
    assert rc == 0, out
    done = [r for r in runs(store(), "flaky") if r.data.tags.get("mltf.complete") == "true"]
    assert len(done) == 1 and done[0].info.status == "FINISHED"
    assert run_flaky(flaky, mode="ok")[0] == 0
    assert len(step_runs()) == 3  # failed, failed again, fixed; the cached rerun added nothing


def test_a_run_the_script_ended_failed_stays_failed_though_it_exits_0(flaky: Path) -> None:
    rc, out = run_flaky(flaky, mode="selffail")
    assert rc == 30, out
    assert "exited 0 but its script ended MLflow run" in out
    (run,) = step_runs()
    assert run.info.status == "FAILED"
    assert "mltf.complete" not in run.data.tags
    assert run.data.tags["mltf.exit_code"] == "0"
    assert parents(store(), "flaky")[0].info.status == "FAILED"
    rc, _ = run_flaky(flaky, mode="selffail")  # not reused: the step runs (and fails) again
    assert rc == 30
    assert len(step_runs()) == 2


def test_fixing_the_script_reruns_with_a_new_key(flaky: Path) -> None:
    script = flaky / "step.py"
    script.write_text(script.read_text().replace('args.mode == "exit3"', 'args.mode in ("exit3", "ok")'))
    rc, _ = run_flaky(flaky)
    assert rc == 30
    script.write_text(script.read_text().replace('args.mode in ("exit3", "ok")', 'args.mode == "exit3"'))
    rc, out = run_flaky(flaky)
    assert rc == 0, out
    failed, ok = step_runs()
    assert failed.data.tags["mltf.cache_key"] != ok.data.tags["mltf.cache_key"]
    assert failed.data.tags["mltf.git_dirty"] == "true"


def test_exit_zero_without_declared_output_is_not_complete(flaky: Path) -> None:
    rc, out = run_flaky(flaky, mode="nooutput")
    assert rc == 30, out
    assert "did not produce declared output(s): result (result.txt)" in out
    (run,) = step_runs()
    assert run.info.status == "FAILED" and "mltf.complete" not in run.data.tags


def test_secrets_stay_out_of_params_and_logs(flaky: Path, tmp_path: Path) -> None:
    secret = "s3cr3t-TOKEN-value"
    rc, out = run_flaky(flaky, api_token=secret)
    assert rc == 0, out
    (run,) = step_runs()
    assert run.data.params["api_token"] == "***"
    assert secret not in json.dumps(run.data.tags)
    log = Path(client(store()).download_artifacts(run.info.run_id, "mltf/step.log", str(tmp_path)))
    assert "--api-token ***" in log.read_text() and secret not in log.read_text()


def _key_of(project: Path) -> str:
    from mltf_flow.pipeline import make_task

    key = make_task(str(project), "main", {}).cache_key()
    assert key is not None
    return str(key)


def _fake_running_run(project: Path, pid: int) -> str:
    """A RUNNING run with this step's key whose owner is process ``pid`` on this machine (a dead one: as a
    launcher that died would leave it)."""
    from mltf_flow.config import load_settings
    from mltf_flow.lease import lease_tags, process_identity
    from mltf_flow.tracking import Tracker

    tracker = Tracker(load_settings())
    exp_id = tracker.ensure_experiment("flaky")
    owner = process_identity()
    started = f"{psutil.Process(pid).create_time():.2f}" if psutil.pid_exists(pid) else "1.00"
    run = tracker.client.create_run(exp_id, tags={
        "mltf.cache_key": _key_of(project), "mltf.step": "main", **owner, "mltf.pid": str(pid),
        "mltf.pid_start": started, **lease_tags(3600),  # a lease far from expiry: only the pid tells
    })
    return str(run.info.run_id)


def test_stale_running_run_is_reaped_not_reused(flaky: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = _fake_running_run(flaky, dead.pid)
    rc, out = run_flaky(flaky)
    assert rc == 0, out
    old = client(store()).get_run(stale)
    assert old.info.status == "KILLED" and old.data.tags["mltf.reaped"] == "true"
    new = next(r for r in runs(store(), "flaky") if r.data.tags.get("mltf.complete") == "true")
    assert new.data.tags["mltf.replaces_run_ids"] == stale


def test_running_run_of_a_live_process_is_not_launched_twice(flaky: Path) -> None:
    live = _fake_running_run(flaky, os.getpid())
    result = run_luigi("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(flaky), "--run-step",
                       "main", "--overrides", "{}", env={"MLTF_FLOW_WAIT_FOR_RUNNING": "false"})
    assert result.returncode == 30, result.output
    assert "already running with the same inputs" in result.output and live in result.output
    assert client(store()).get_run(live).info.status == "RUNNING"


@pytest.mark.slow
def test_sigterm_mid_step_kills_the_command_and_the_run(flaky: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [str(BIN / "luigi"), "--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(flaky),
         "--run-step", "main", "--overrides", '{"mode": "hang"}', "--local-scheduler", "--no-lock"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait for the event, not for a time
        if "[main] READY" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0, rest
    (run,) = step_runs()
    assert run.info.status == "KILLED"
    command_pid = int(run.data.tags["mltf.command_pid"])
    assert not psutil.pid_exists(command_pid) or psutil.Process(command_pid).status() == psutil.STATUS_ZOMBIE
    # A retry starts afresh and completes.
    rc, out = run_flaky(flaky)
    assert rc == 0, out


def _killed_at(project: Path, phase: str) -> None:
    """Start the pipeline, wait until its script reaches ``phase``, SIGKILL the whole invocation."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "FLAKY_PAUSE": phase}
    proc = subprocess.Popen(
        [str(BIN / "luigi"), "--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project),
         "--run-step", "main", "--overrides", "{}", "--local-scheduler", "--no-lock"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    read_until(proc, f"[main] PAUSED {phase}")
    os.killpg(proc.pid, signal.SIGKILL)  # nothing of ours gets to clean up
    proc.communicate(timeout=60)


def _running() -> list[str]:
    return [f"{r.data.tags.get('mltf.role')} {r.info.run_id}" for r in runs(store(), "flaky")
            if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_a_run_its_script_ended_before_the_kill_is_reaped_not_trusted(flaky: Path) -> None:
    _killed_at(flaky, "ended")
    (ended,) = step_runs()
    assert ended.info.status == "FINISHED" and "mltf.complete" not in ended.data.tags  # never verified
    (old_parent,) = parents(store(), "flaky")
    assert old_parent.info.status == "RUNNING"  # what a SIGKILL leaves
    rc, out = run_flaky(flaky)
    assert rc == 0, out
    old = client(store()).get_run(ended.info.run_id)
    assert old.info.status == "KILLED" and old.data.tags["mltf.reaped"] == "true"
    assert "never verified" in old.data.tags["mltf.error"]
    new = next(r for r in step_runs() if r.data.tags.get("mltf.complete") == "true")
    assert ended.info.run_id in new.data.tags["mltf.replaces_run_ids"]
    parent = client(store()).get_run(old_parent.info.run_id)  # its invocation is gone: reaped by the rerun
    assert parent.info.status == "KILLED" and parent.data.tags["mltf.reaped"] == "true"
    assert _running() == []


def test_a_parameter_mlflow_rejects_leaves_no_run_running(flaky: Path) -> None:
    mlproject = flaky / "MLproject"
    mlproject.write_text(mlproject.read_text().replace("api_token: {type: string, default: none}",
                                                       "api_token: {type: string, default: none}\n      "
                                                       "'odd@name': {type: string, default: x}"))
    rc, out = run_flaky(flaky)
    assert rc == 30, out
    (run,) = step_runs()
    assert run.info.status == "FAILED" and "MLflow rejected the parameters" in run.data.tags["mltf.error"]
    assert parents(store(), "flaky")[0].info.status == "FAILED"
    assert _running() == []


def test_rucio_dataset_without_a_rucio_configuration_fails_clearly(tmp_path: Path) -> None:
    env = {"RUCIO_CONFIG": str(tmp_path / "no-such-rucio.cfg"), "RUCIO_HOME": str(tmp_path / "nowhere")}
    result = run_luigi("--module", "pipelines", "Train", "--dataset", "rucio://user.jdoe:jets_v1", env=env)
    assert result.returncode == 30, result.output
    assert "Rucio is not configured here" in result.output and "RUCIO_CONFIG" in result.output
    # Nothing was launched: the one run is the FAILED parent that holds the failure report.
    (parent,) = runs(store())
    assert parent.data.tags["mltf.role"] == "pipeline" and parent.info.status == "FAILED"
    assert {a.path for a in client(store()).list_artifacts(parent.info.run_id, "mltf")} == {
        "mltf/failure_report.md", "mltf/failure_report.json"}


def test_bad_parameter_is_reported_before_anything_runs(flaky: Path) -> None:
    rc, out = run_flaky(flaky, mdoe="ok")
    assert rc != 0
    assert "has no parameter 'mdoe'" in out and "mode (string)" in out
    assert not runs(store(), "flaky")


def test_pipeline_module_import_and_complete_stay_light(jet_sample: Path) -> None:
    code = (
        "import sys, pipelines; t = pipelines.Train(dataset=sys.argv[1]); t.complete(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow','dask','distributed','torch',"
        "'uproot','pandas','dask_jobqueue'}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(jet_sample)], capture_output=True, text=True,
                         cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unchanged_mlflow_project_runs_as_single_step(tmp_path: Path) -> None:
    project = tmp_path / "plain"
    shutil.copytree(FLAKY, project)
    (project / "pipeline.yaml").unlink()
    result = run_luigi("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project),
                       "--run-step", "main")
    assert result.returncode == 0, result.output
    result = run_luigi("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project),
                       "--run-step", "step.py", "--overrides", '{"mode": "ok"}')
    assert result.returncode == 0, result.output
