"""What a step run's creation and its end send together (each a request fewer per trial of a study): tags made
from the new run's id go with its parameters, a trial's state with its exit code, and the artifact location the
creation returned is where its artifacts go. Against a real MLflow sqlite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mltf_flow.config import Settings, load_settings
from mltf_flow.run_guard import run_guard
from mltf_flow.tags import TAG_COMPLETE, TAG_ERROR, TAG_EXIT_CODE, TAG_TRIAL_STATE
from mltf_flow.tracking import Tracker

NOTE = "mlflow.note.content"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    work = tmp_path_factory.mktemp("batches")
    yield load_settings(work_dir=str(work), tracking_uri=f"sqlite:///{work / 'mlflow.db'}")


@pytest.fixture(scope="module")
def tracker(store: Settings) -> Tracker:
    return Tracker(store)


@pytest.fixture(scope="module")
def experiment_id(tracker: Tracker) -> str:
    return tracker.ensure_experiment("batches")


def test_tags_made_from_the_new_run_go_with_its_parameters(tracker: Tracker, experiment_id: str) -> None:
    asked: list[str] = []

    def note(run_id: str) -> dict[str, str]:
        asked.append(run_id)
        return {NOTE: f"run {run_id}"}

    run_id = tracker.create_step_run(experiment_id, parent_id=None, run_name="s", tags={"a": "1"},
                                     params={"lr": 0.1, "epochs": 3}, more_tags=note)
    run = tracker.client.get_run(run_id)
    assert asked == [run_id]
    assert run.data.params == {"lr": "0.1", "epochs": "3"} and run.data.tags[NOTE] == f"run {run_id}"
    assert run.data.tags["a"] == "1" and run.info.status == "RUNNING"


def test_tags_mlflow_rejects_leave_the_parameters_and_the_run(tracker: Tracker, experiment_id: str) -> None:
    bad = "../note"  # a name MLflow rejects (it would be a path)
    run_id = tracker.create_step_run(experiment_id, parent_id=None, run_name="s", tags={}, params={"lr": 0.1},
                                     more_tags=lambda _: {bad: "described"})
    run = tracker.client.get_run(run_id)
    assert run.data.params == {"lr": "0.1"} and bad not in run.data.tags and run.info.status == "RUNNING"


def test_more_than_a_batch_of_parameters_all_arrive(tracker: Tracker, experiment_id: str) -> None:
    params = {f"p{i:03d}": i for i in range(250)}
    run_id = tracker.create_step_run(experiment_id, parent_id=None, run_name="s", tags={}, params=params,
                                     more_tags=lambda _: {NOTE: "described"})
    run = tracker.client.get_run(run_id)
    assert run.data.params == {k: str(v) for k, v in params.items()} and run.data.tags[NOTE] == "described"


@pytest.mark.parametrize(("ok", "status", "state"), [(True, "FINISHED", "complete"), (False, "KILLED", "pruned")])
def test_the_end_sets_the_callers_tags_with_the_exit_code(tracker: Tracker, experiment_id: str, ok: bool,
                                                          status: str, state: str) -> None:
    run_id = tracker.create_step_run(experiment_id, parent_id=None, run_name="s", tags={}, params={})
    with run_guard(tracker, run_id, step="s") as guard:
        guard.end(ok=ok, exit_code=0 if ok else -15, status=status, tags={TAG_TRIAL_STATE: state})
    run = tracker.client.get_run(run_id)
    assert run.info.status == status and run.data.tags[TAG_TRIAL_STATE] == state
    assert run.data.tags[TAG_EXIT_CODE] == ("0" if ok else "-15")
    assert (run.data.tags.get(TAG_COMPLETE) == "true") is ok


def test_an_end_without_tags_sets_only_its_own(tracker: Tracker, experiment_id: str) -> None:
    run_id = tracker.create_step_run(experiment_id, parent_id=None, run_name="s", tags={}, params={})
    with pytest.raises(RuntimeError), run_guard(tracker, run_id, step="s"):
        raise RuntimeError("disk full")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED" and TAG_TRIAL_STATE not in run.data.tags
    assert run.data.tags[TAG_ERROR] == "RuntimeError: disk full"


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("dask lost the worker"), "FAILED"),
                                             (KeyboardInterrupt(), "KILLED")])
def test_an_error_sets_the_failed_tags_unless_the_run_is_killed(tracker: Tracker, experiment_id: str,
                                                               error: BaseException, status: str) -> None:
    # A trial whose launcher raised is a failed trial (mltf.trial.state); one stopped by Ctrl-C has no state.
    run_id = tracker.create_step_run(experiment_id, parent_id=None, run_name="s", tags={}, params={})
    with pytest.raises(type(error)), run_guard(tracker, run_id, step="s", failed_tags={TAG_TRIAL_STATE: "failed"}):
        raise error
    run = tracker.client.get_run(run_id)
    assert run.info.status == status and TAG_ERROR in run.data.tags
    assert run.data.tags.get(TAG_TRIAL_STATE) == ("failed" if status == "FAILED" else None)


def test_artifacts_go_to_the_location_the_creation_returned(tracker: Tracker, experiment_id: str,
                                                           tmp_path: Path) -> None:
    run_id = tracker.create_step_run(experiment_id, parent_id=None, run_name="s", tags={}, params={})
    log = tmp_path / "run.log"
    log.write_text("hello\n")
    tracker.log_artifact(run_id, log, "mltf", name="step.log")
    # A client of its own (nothing remembered) finds it where the run says its artifacts are.
    other = MlflowClient(tracking_uri=tracker.settings.tracking_uri)
    assert [a.path for a in other.list_artifacts(run_id, "mltf")] == ["mltf/step.log"]
    location = other.get_run(run_id).info.artifact_uri
    assert location is not None and location.startswith("file://")
    assert (Path(location.removeprefix("file://")) / "mltf" / "step.log").read_text() == "hello\n"
