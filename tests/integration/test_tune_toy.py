"""A study of a project written for nothing but this test (no torch): what a study does with runs that exist,
trials that fail, and the ``report`` helper, through ``mltf-flow tune`` as a user runs it.

The project has no ``pipeline.yaml`` (its entry point is a single step that runs on the driver), logs its metric
through :func:`mltf_flow.tune.report` and fails (exit code 3) when ``mode`` is ``crash``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import BIN
from tests.integration.mlflow_queries import client, runs, sqlite_uri

MLPROJECT = """\
name: toy
entry_points:
  objective:
    parameters:
      x: {type: float, default: 0.5}
      mode: {type: string, default: ok}
      epochs: {type: int, default: 3}
    command: python objective.py --x {x} --mode {mode} --epochs {epochs}
"""
OBJECTIVE = """\
import argparse
import sys

from mltf_flow.tune import report

parser = argparse.ArgumentParser()
parser.add_argument("--x", type=float)
parser.add_argument("--mode")
parser.add_argument("--epochs", type=int)
args = parser.parse_args()
for epoch in range(args.epochs):
    report("score", -((args.x - 0.3) ** 2) + 0.01 * epoch, epoch)
if args.mode == "crash":
    print("objective: crashing as asked", file=sys.stderr)
    sys.exit(3)
"""
SPACE = """\
x: {type: float, low: 0.0, high: 1.0}
mode: {type: categorical, choices: [ok, crash]}
"""
N_TRIALS = 6  # with --seed 4, trials 1 and 3 crash


def _mltf(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mltf-flow"), *args], cwd=project, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "toy"
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    (root / "objective.py").write_text(OBJECTIVE)
    (root / "space.yaml").write_text(SPACE)
    return root


def test_a_study_reuses_a_run_that_exists_records_failed_trials_and_goes_on(project: Path, tmp_path: Path) -> None:
    plain = _mltf(project, "run", ".", "--step", "objective")  # the defaults, run before any study
    assert plain.returncode == 0, plain.stderr
    uri = sqlite_uri(tmp_path / "work")
    (earlier,) = [r for r in runs(uri, "toy") if r.data.tags.get("mltf.role") == "step"]
    tuned = _mltf(project, "tune", ".", "--step", "objective", "--space", "space.yaml", "--metric", "score",
                  "--n-trials", str(N_TRIALS), "--sampler", "random", "--seed", "4", "--pruner", "none")
    assert tuned.returncode == 0, tuned.stderr
    out = tuned.stderr
    assert "trial 0 [cached] score=-0.02 x=0.5 mode=ok (" in out and earlier.info.run_id in out
    trials = [r for r in runs(uri, "toy") if r.data.tags.get("mltf.role") == "trial"]
    failed = [r for r in trials if r.data.tags.get("mltf.trial.state") == "failed"]
    assert failed and all(r.info.status == "FAILED" and r.data.params["mode"] == "crash" for r in failed)
    assert "[failed]" in out and "its command exited with code 3" in out  # one line per failed trial
    import optuna

    (name,) = optuna.get_all_study_names(storage=f"sqlite:///{tmp_path / 'work' / 'optuna.db'}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'work' / 'optuna.db'}")
    study_trials = study.trials
    errors = [t.user_attrs["error"] for t in study_trials if t.params["mode"] == "crash"]
    assert len(errors) == len(failed) and all("objective: crashing as asked" in e for e in errors)  # with the tail
    (study,) = [r for r in runs(uri, "toy") if r.data.tags.get("mltf.role") == "study"]
    complete = N_TRIALS - len(failed)
    assert study.data.tags["mltf.study.trials"] == f"{N_TRIALS}: {complete} complete, 0 pruned, {len(failed)} failed"
    assert study.info.status == "FINISHED" and study.data.tags["mltf.complete"] == "true"
    # The helper logged the study's metric at every epoch of a trial that ran.
    ran = next(r for r in trials if r.data.tags.get("mltf.trial.state") == "complete")
    history = client(uri).get_metric_history(ran.info.run_id, "score")
    assert sorted(m.step for m in history) == [0, 1, 2]
    # Every trial run has its parameters, its description (sent with them) and its state (sent with its exit code).
    assert len(trials) == N_TRIALS - 1  # trial 0 was the run that existed
    for run in trials:
        tags = run.data.tags
        assert {"x", "mode", "epochs"} <= set(run.data.params) and "cache key" in tags["mlflow.note.content"]
        assert tags["mltf.trial.state"] == ("complete" if run.data.params["mode"] == "ok" else "failed")
        assert tags["mltf.exit_code"] == ("0" if run.data.params["mode"] == "ok" else "3")
    # Without a pruner nothing is read while a trial runs; its per-epoch values still reach Optuna at its end.
    told = next(t for t in study_trials if t.user_attrs.get("mlflow_run_id") == ran.info.run_id)
    assert sorted(told.intermediate_values) == [0, 1, 2]
