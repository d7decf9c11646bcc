"""PruneWatch, a trial launcher's ``should_stop``: it reads the metric a run logs per epoch from a real MLflow
store, reports it to a real Optuna study, and says stop when the pruner prunes the trial (or the driver stops)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import optuna
import pytest
from mlflow.tracking import MlflowClient

from mltf_flow.config import load_settings
from mltf_flow.tracking import Tracker
from mltf_flow.tune import trial as trial_module
from mltf_flow.tune.trial import PruneWatch, StudyContext
from tests.helpers import seed_store

METRIC = "val_accuracy"
GOOD = [0.60, 0.70, 0.80, 0.85]


@pytest.fixture
def tracker(tmp_path: Path, store_template: Path) -> Tracker:
    seed_store(tmp_path / "work", store_template)  # the test's MLTF_FLOW_WORK_DIR, with a migrated store
    settings = load_settings()
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    return Tracker(settings)


@pytest.fixture
def context(tracker: Tracker) -> StudyContext:
    experiment_id = tracker.client.create_experiment("demo")
    study_run = tracker.client.create_run(experiment_id).info.run_id
    # PruneWatch reads the tracker, the metric and the stop event; the step, its cluster and its requirements
    # are the trial launch's (not used here).
    unused = cast(Any, None)
    return StudyContext(base=unused, requirements={}, settings=tracker.settings, task_id="Tune_demo",
                        cluster=unused, tracker=tracker, experiment="demo", experiment_id=experiment_id,
                        study_run_id=study_run, study_name="demo.train.test", metric=METRIC, known={})


@pytest.fixture
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize",
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))


@pytest.fixture(autouse=True)
def every_call_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trial_module, "POLL_S", 0.0)


def _run(context: StudyContext) -> str:
    client: MlflowClient = context.tracker.client
    run = client.create_run(context.experiment_id, tags={"mlflow.parentRunId": context.study_run_id})
    run_id: str = run.info.run_id
    return run_id


def _log(context: StudyContext, run_id: str, step: int, value: float) -> None:
    context.tracker.client.log_metric(run_id, METRIC, value, step=step)


def _complete_a_good_trial(context: StudyContext, study: optuna.Study) -> None:
    """Trial 0: every epoch's value read through a watch, then told COMPLETE (the pruner's reference)."""
    trial, run_id = study.ask(), _run(context)
    watch = PruneWatch(context, trial, run_id)
    for epoch, value in enumerate(GOOD):
        _log(context, run_id, epoch, value)
        assert not watch.should_stop()  # a startup trial is never pruned
    study.tell(trial, GOOD[-1])
    assert study.trials[0].intermediate_values == dict(enumerate(GOOD))


def test_a_worse_trial_is_pruned_and_its_values_reach_optuna(context: StudyContext, study: optuna.Study) -> None:
    _complete_a_good_trial(context, study)
    trial, run_id = study.ask(), _run(context)
    watch = PruneWatch(context, trial, run_id)
    assert not watch.should_stop()  # nothing logged yet: nothing to judge
    assert watch.reported == {}
    _log(context, run_id, 0, 0.30)
    _log(context, run_id, 1, 0.32)
    assert watch.should_stop()
    assert watch.pruned_at == 1
    assert watch.reported == {0: 0.30, 1: 0.32}
    assert study.trials[1].intermediate_values == {0: 0.30, 1: 0.32}
    # Once pruned it stays stopped, without reading MLflow again.
    _log(context, run_id, 2, 0.99)
    assert watch.should_stop()
    assert watch.reported == {0: 0.30, 1: 0.32}


def test_a_better_trial_is_not_stopped(context: StudyContext, study: optuna.Study) -> None:
    _complete_a_good_trial(context, study)
    trial, run_id = study.ask(), _run(context)
    watch = PruneWatch(context, trial, run_id)
    for epoch, value in enumerate(GOOD):
        _log(context, run_id, epoch, value + 0.05)
        assert not watch.should_stop(), f"stopped at epoch {epoch}"
    assert watch.pruned_at is None
    assert study.trials[1].intermediate_values == {epoch: value + 0.05 for epoch, value in enumerate(GOOD)}


def test_an_epoch_logged_twice_is_reported_once(context: StudyContext, study: optuna.Study) -> None:
    trial, run_id = study.ask(), _run(context)
    watch = PruneWatch(context, trial, run_id)
    _log(context, run_id, 0, 0.5)
    watch.poll()
    _log(context, run_id, 0, 0.9)  # Optuna refuses a second value for one step: the first one stands
    _log(context, run_id, 1, 0.6)
    watch.poll()
    assert watch.reported == {0: 0.5, 1: 0.6}
    assert study.trials[0].intermediate_values == {0: 0.5, 1: 0.6}


def test_polls_are_throttled(context: StudyContext, study: optuna.Study, monkeypatch: pytest.MonkeyPatch) -> None:
    trial, run_id = study.ask(), _run(context)
    watch = PruneWatch(context, trial, run_id)
    _log(context, run_id, 0, 0.5)
    watch.poll()
    monkeypatch.setattr(trial_module, "POLL_S", 3600.0)
    _log(context, run_id, 1, 0.6)
    assert not watch.should_stop()
    assert watch.reported == {0: 0.5}  # within POLL_S of the last read: MLflow was not asked
    monkeypatch.setattr(trial_module, "POLL_S", 0.0)
    assert not watch.should_stop()
    assert watch.reported == {0: 0.5, 1: 0.6}


def test_a_stopping_driver_stops_every_trial(context: StudyContext, study: optuna.Study) -> None:
    trial, run_id = study.ask(), _run(context)
    watch = PruneWatch(context, trial, run_id)
    assert not watch.should_stop()
    context.stopping.set()
    assert watch.should_stop()
    assert watch.pruned_at is None  # stopped, not pruned: the trial is retried by the next run of the study
