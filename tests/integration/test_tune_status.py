"""``mltf-flow status --study`` and a study stopped by SIGTERM, on a project written for nothing but this test
(no torch: each trial takes a second or two).

The project declares its study in ``pipeline.yaml`` (4 trials, 2 at a time, random sampler, seeded). The status
is read from the real sqlite MLflow store and the real Optuna storage of the test's work directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mltf_flow import phases
from tests.helpers import BIN, wait_until
from tests.integration.mlflow_queries import runs, sqlite_uri

MLPROJECT = """\
name: toy
entry_points:
  objective:
    parameters:
      x: {type: float, default: 0.5}
      epochs: {type: int, default: 3}
    command: python objective.py --x {x} --epochs {epochs}
"""
OBJECTIVE = """\
import argparse

from mltf_flow.tune import report

parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
parser.add_argument("--epochs", type=int)
args = parser.parse_args()
for epoch in range(args.epochs):
    report("score", -((args.x - 0.3) ** 2) + 0.01 * epoch, epoch)
"""
PIPELINE = """\
name: toy
steps:
  objective:
    entry_point: objective
    code: [objective.py]
studies:
  sweep:
    step: objective
    metric: score
    n_trials: 4
    n_jobs: 2
    sampler: random
    seed: 4
    pruner: none
    space:
      x: {type: float, low: 0.0, high: 1.0}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    (root / "objective.py").write_text(OBJECTIVE)
    (root / "pipeline.yaml").write_text(PIPELINE)
    return root


def _env(**more: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop(phases.PAUSE_AT_ENV, None)
    return {**env, **more}


def _mltf(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mltf-flow"), *args], cwd=project, capture_output=True, text=True, timeout=600,
                          env=_env())


def _study_run(uri: str) -> Any:
    (study,) = [r for r in runs(uri, "toy") if r.data.tags.get("mltf.role") == "study"]
    return study


def _optuna_study(work: Path) -> Any:
    import optuna

    storage = f"sqlite:///{work / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage=storage)
    return optuna.load_study(study_name=name, storage=storage)


def test_status_of_a_study_before_it_ran_and_once_it_completed(project: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    before = _mltf(project, "status", ".", "--study", "sweep")
    assert before.returncode == 0, before.stderr
    assert "will run" in before.stdout and "study: no study run yet" in before.stdout, before.stdout
    assert "trials: none yet" in before.stdout, before.stdout
    assert not (work / "optuna.db").exists()  # status reads: it never creates the storage or a study

    tuned = _mltf(project, "tune", ".", "--study", "sweep")
    assert tuned.returncode == 0, tuned.stderr
    after = _mltf(project, "status", ".", "--study", "sweep")
    assert after.returncode == 0, after.stderr
    study, run = _optuna_study(work), _study_run(sqlite_uri(work))
    best = study.best_trial
    out = after.stdout
    assert f"cached  run {run.info.run_id[:8]}" in out, out
    assert f"study run {run.info.run_id}: complete" in out, out
    assert f"trials: 4 of 4: 4 complete, 0 pruned, 0 failed (study {study.study_name})" in out, out
    assert "left RUNNING" not in out, out
    assert (f"best score {best.value:.6g} at x={best.params['x']:.6g} (trial {best.number}, MLflow run "
            f"{best.user_attrs['mlflow_run_id']})") in out, out
    assert f"dashboard: {run.data.tags['mltf.study.dashboard']}" in out, out
    assert "Did not run any tasks" in _mltf(project, "tune", ".", "--study", "sweep").stdout


def test_a_study_stopped_by_sigterm_names_its_run_and_status_says_a_rerun_continues(
    project: Path, tmp_path: Path,
) -> None:
    work, pause_dir = tmp_path / "work", tmp_path / "pause"
    log = tmp_path / "stopped.log"
    pause = {phases.PAUSE_AT_ENV: phases.TRIAL_TOLD, phases.PAUSE_DIR_ENV: str(pause_dir)}
    with open(log, "w") as sink:
        proc = subprocess.Popen([str(BIN / "mltf-flow"), "tune", ".", "--study", "sweep"], cwd=project, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True, env=_env(**pause))
    try:
        marker = phases.marker(phases.TRIAL_TOLD, pause_dir)
        wait_until(lambda: marker.exists() or proc.poll() is not None, 300, "the first trial told")
        assert marker.exists(), log.read_text()
        os.kill(int(marker.read_text()), signal.SIGTERM)  # the driver itself, as a batch system stops it
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    output = log.read_text()
    run = _study_run(sqlite_uri(work))
    assert code != 0 and run.info.status == "KILLED", output
    # The failure report names the study run (it exists), not "no MLflow run".
    assert "no MLflow run" not in output, output
    assert f"run: MLflow run {run.info.run_id}" in output or f"/runs/{run.info.run_id}" in output, output

    status = _mltf(project, "status", ".", "--study", "sweep")
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert f"study run {run.info.run_id}: KILLED (stopped; a rerun of the same command continues it)" in out, out
    assert "trials: 1 of 4: 1 complete, 0 pruned, 0 failed" in out, out
    # The trials in flight when it stopped (a few more than its slots: mltf_flow.tune.slots) stay RUNNING.
    from optuna.trial import TrialState

    left = len(_optuna_study(work).get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    assert left >= 1 and f"{left} trial(s) left RUNNING (a rerun runs them again)" in out, out
    assert "best score " in out, out
