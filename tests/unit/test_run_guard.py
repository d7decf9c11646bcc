"""run_guard: whatever escapes the work of an open run ends it (FAILED, or KILLED for an interrupt), once,
with the error tagged, the log kept and the parent told. Against a real MLflow sqlite store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mltf_flow.config import Settings, load_settings
from mltf_flow.launch.local import Stopped
from mltf_flow.run_guard import run_guard
from mltf_flow.tags import TAG_COMPLETE, TAG_ERROR, TAG_EXIT_CODE, TAG_FAILED_STEPS, TAG_STEPS_RUN
from mltf_flow.tracking import Tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    work = tmp_path_factory.mktemp("guard")
    yield load_settings(work_dir=str(work), tracking_uri=f"sqlite:///{work / 'mlflow.db'}")


def _runs(settings: Settings) -> tuple[Tracker, str, str]:
    tracker = Tracker(settings)
    experiment_id = tracker.ensure_experiment("guard")
    parent = tracker.parent_run(experiment_id, "guard", uuid.uuid4().hex)
    run_id = tracker.create_step_run(experiment_id, parent_id=parent, run_name="s", tags={}, params={})
    return tracker, parent, run_id


@pytest.mark.parametrize(("error", "status"), [
    (RuntimeError("disk full"), "FAILED"),
    (KeyboardInterrupt(), "KILLED"),
    (Stopped(15), "KILLED"),
    (SystemExit(3), "KILLED"),
])
def test_an_escaping_error_ends_the_run(store: Settings, tmp_path: Path, error: BaseException, status: str) -> None:
    tracker, parent, run_id = _runs(store)
    log = tmp_path / "step.log"
    log.write_text("half a log\n")
    with pytest.raises(type(error)) as raised, run_guard(tracker, run_id, parent_id=parent, step="s", log_path=log):
        raise error
    assert raised.value.run_id == run_id  # type: ignore[attr-defined]  # the failure report names the run
    run = tracker.client.get_run(run_id)
    assert run.info.status == status
    assert run.data.tags[TAG_ERROR].startswith(type(error).__name__)
    assert TAG_COMPLETE not in run.data.tags
    assert [a.path for a in tracker.client.list_artifacts(run_id, "mltf")] == ["mltf/step.log"]
    parent_run = tracker.client.get_run(parent)
    assert parent_run.info.status == "FAILED"
    assert parent_run.data.tags[TAG_FAILED_STEPS] == "s"


def test_an_error_that_names_its_run_keeps_it(store: Settings) -> None:
    from mltf_flow.errors import StepError

    tracker, _, run_id = _runs(store)
    with pytest.raises(StepError) as raised, run_guard(tracker, run_id):
        raise StepError("the trial's own run failed", step="s", run_id="another-run")
    assert raised.value.run_id == "another-run"


def test_an_ended_run_is_not_ended_again(store: Settings) -> None:
    """A failure the caller explained (guard.end, then its own error) keeps the caller's exit code and
    gets no second ending over it."""
    tracker, parent, run_id = _runs(store)
    with pytest.raises(ValueError, match="exit 2"), run_guard(tracker, run_id, parent_id=parent, step="s") as guard:
        guard.end(ok=False, exit_code=2)
        raise ValueError("exit 2")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_EXIT_CODE] == "2"
    assert TAG_ERROR not in run.data.tags


def test_success_completes_the_run_and_the_parent(store: Settings) -> None:
    tracker, parent, run_id = _runs(store)
    with run_guard(tracker, run_id, parent_id=parent, step="s") as guard:
        guard.end(ok=True, exit_code=0)
    run = tracker.client.get_run(run_id)
    assert (run.info.status, run.data.tags[TAG_COMPLETE]) == ("FINISHED", "true")
    parent_run = tracker.client.get_run(parent)
    assert (parent_run.info.status, parent_run.data.tags[TAG_STEPS_RUN]) == ("FINISHED", "s")


def test_the_error_prefix_says_what_failed(store: Settings) -> None:
    tracker, _, run_id = _runs(store)
    with pytest.raises(OSError), run_guard(tracker, run_id, error_prefix="submission failed: "):
        raise OSError("sbatch: not found")
    tags = tracker.client.get_run(run_id).data.tags
    assert tags[TAG_ERROR] == "submission failed: OSError: sbatch: not found"


def test_bookkeeping_that_fails_does_not_hide_the_error(store: Settings, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The tracking store going away while a step fails: the step's own error is what the user sees."""
    broken = load_settings(work_dir=str(tmp_path / "w"), tracking_uri=f"sqlite:///{tmp_path / 'gone' / 'x.db'}")
    tracker = Tracker(broken)
    with pytest.raises(RuntimeError, match="the real error"), run_guard(tracker, "0" * 32):
        raise RuntimeError("the real error")
    assert "could not mark MLflow run" in caplog.text
