"""The example's study (issue 18) on the local profile: 8 trials of Train, pruning on, its driver SIGKILLed
after a trial was told, then the same command to the end, then once more.

One chain, observed by the tests below (a study costs ~9 trainings; each test judges one thing it showed):

1. ``luigi --module pipelines Tune --n-trials 8 --epochs 3`` pauses after the first trial it told Optuna about
   (``MLTF_PAUSE_AT=study.trial_told``, a marker file) and its whole process group is SIGKILLed there, with the
   other trial still running or finished but not told;
2. the same command: the study continues to exactly 8 trials, the one running at the kill failed and retried;
3. the same command again: nothing runs;
4. ``Train --from-study NAME``: the best trial's run is that Train's run (nothing runs);
5. ``mltf-flow optuna-dashboard`` serves the study where the study run's link points.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mltf_flow import phases
from tests.faults.invocations import (
    TAG_ENV,
    Invocation,
    kill_group,
    orphans_after,
    start,
    store_state,
    wait_for_marker,
)
from tests.helpers import BIN, REPO, free_port, wait_until
from tests.integration.mlflow_queries import client, runs, sqlite_uri

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a study of 9 trainings, and its reruns

#: 8, not the example's 20: a trial costs ~15 s on the 2-core CI machine (start-up and model logging), two at a
#: time. The points do not depend on timing (seed 11 for trial 1, 13 once resumed after 2 trials): the counted
#: trials 1-8 hold one better than the defaults (trial 4 at 0.784, trial 7 at 0.791, the defaults 0.781), at
#: least 4 complete, and from trial 6 on (5 complete before it) the median pruner may stop one.
N_TRIALS = 8
EPOCHS = 3


@dataclass
class Chain:
    work: Path
    uri: str
    killed_output: str
    orphans: list[str]
    resumed_code: int
    resumed_output: str
    rerun_code: int
    rerun_output: str
    runs_before_rerun: set[str]
    runs_after_rerun: set[str]
    from_study_code: int
    runs_after_from_study: set[str]
    study_name: str
    env: dict[str, str]


def _tune_args(sample: Path) -> list[str]:
    return [str(BIN / "luigi"), "--module", "pipelines", "Tune", "--dataset", str(sample), "--n-trials",
            str(N_TRIALS), "--epochs", str(EPOCHS), "--sampler-seed", "11", "--local-scheduler"]


def _run_ids(uri: str) -> set[str]:
    return {r.info.run_id for r in runs(uri)}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, jet_sample: Path, store_template: Path) -> Chain:
    from tests.helpers import seed_store

    root = tmp_path_factory.mktemp("tune")
    work = root / "work"
    seed_store(work, store_template)
    uri = sqlite_uri(work)
    tag = uuid.uuid4().hex
    env = {"MLTF_FLOW_WORK_DIR": str(work), TAG_ENV: tag, "MLTF_FLOW_ENV_MANAGER": "local"}
    pause_dir = root / "pause"
    started: list[Invocation] = []

    def launch(args: list[str], log: str, **pause: Any) -> Invocation:
        started.append(start(args, env, root / log, **pause))
        return started[-1]

    try:  # a fixture stopped half-way (a timeout) leaves no invocation running
        first = launch(_tune_args(jet_sample), "killed.log", pause_at=phases.TRIAL_TOLD, pause_dir=pause_dir)
        try:
            assert wait_for_marker(first, phases.TRIAL_TOLD, pause_dir, timeout=400), first.output()
        finally:
            kill_group(first)
        orphans = orphans_after(tag)
        resumed = launch(_tune_args(jet_sample), "resumed.log")
        resumed_code = resumed.proc.wait(timeout=900)
        before = _run_ids(uri)
        rerun = launch(_tune_args(jet_sample), "rerun.log")
        rerun_code = rerun.proc.wait(timeout=300)
        after = _run_ids(uri)
        (study,) = [r for r in runs(uri) if r.data.tags.get("mltf.role") == "study"]
        name = study.data.tags["mltf.study.name"]
        train = launch([str(BIN / "luigi"), "--module", "pipelines", "Train", "--dataset", str(jet_sample),
                        "--from-study", name, "--local-scheduler"], "from-study.log")
        from_study_code = train.proc.wait(timeout=300)
    finally:
        for invocation in started:
            if invocation.proc.poll() is None:
                kill_group(invocation)
    return Chain(work, uri, first.output(), orphans, resumed_code, resumed.output(), rerun_code, rerun.output(),
                 before, after, from_study_code, _run_ids(uri), name, env)


def _study(chain: Chain) -> Any:
    import optuna

    return optuna.load_study(study_name=chain.study_name, storage=f"sqlite:///{chain.work / 'optuna.db'}")


def _trial_runs(chain: Chain) -> list[Any]:
    return [r for r in runs(chain.uri) if r.data.tags.get("mltf.role") == "trial"]


def test_killed_driver_leaves_no_process_and_the_rerun_completes(chain: Chain) -> None:
    assert chain.orphans == [], chain.killed_output
    assert chain.resumed_code == 0, chain.resumed_output
    assert "was left running by a driver that stopped; it runs again" in chain.resumed_output


def test_the_study_has_exactly_n_trials_none_left_running_none_finished_twice(chain: Chain) -> None:
    from optuna.trial import TrialState

    study = _study(chain)
    trials = study.get_trials()
    retried = [t for t in trials if t.system_attrs.get("mltf_retried")]
    counted = [t for t in trials if t not in retried]
    assert len(counted) == N_TRIALS and all(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in counted)
    assert retried and all(t.state == TrialState.FAIL for t in retried)  # the trial running at the kill
    assert store_state(chain.uri).running == []
    complete = [r for r in _trial_runs(chain) if r.data.tags.get("mltf.complete") == "true"]
    by_key = Counter(r.data.tags["mltf.cache_key"] for r in complete)
    assert [k for k, n in by_key.items() if n > 1] == []
    # Every counted trial names its run; every complete trial's run is one of the complete runs.
    ids = {r.info.run_id for r in complete}
    for trial in counted:
        assert trial.user_attrs.get("mlflow_run_id"), trial
        if trial.state == TrialState.COMPLETE:
            assert trial.user_attrs["mlflow_run_id"] in ids


def test_trials_are_child_runs_of_one_study_run_with_params_metrics_and_state(chain: Chain) -> None:
    (study_run,) = [r for r in runs(chain.uri) if r.data.tags.get("mltf.role") == "study"]
    assert study_run.info.status == "FINISHED" and study_run.data.tags["mltf.complete"] == "true"
    mlflow = client(chain.uri)
    states = Counter()
    for run in _trial_runs(chain):
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == study_run.info.run_id
        assert {"lr", "hidden", "batch_size", "optimizer", "epochs"} <= set(run.data.params)
        assert tags["mltf.study.name"] == chain.study_name and tags["mltf.trial.number"].isdigit()
        state = tags.get("mltf.trial.state")
        states[state] += 1
        history = sorted(m.step for m in mlflow.get_metric_history(run.info.run_id, "val_accuracy"))
        if state == "complete":
            assert run.info.status == "FINISHED" and history == list(range(EPOCHS))
        elif state == "pruned":
            assert run.info.status == "KILLED" and int(tags["mltf.trial.pruned_at"]) in history
    assert states["complete"] >= N_TRIALS // 2, states
    best = study_run.data.tags
    assert json.loads(best["mltf.study.best_params"]).keys() <= {"lr", "hidden", "batch_size", "optimizer",
                                                                 "momentum"}
    assert best["mltf.study.trials"].startswith(f"{N_TRIALS}: ")
    assert float(best["mltf.study.best_value"]) == study_run.data.metrics["best_val_accuracy"]


def test_the_best_trial_beats_the_defaults(chain: Chain) -> None:
    from optuna.trial import TrialState

    study = _study(chain)
    # Trial 0 is the entry point's defaults; if it was the trial running at the kill, its retry holds its result.
    defaults = {"lr": 0.003, "hidden": 32, "batch_size": 256, "optimizer": "adam"}
    (baseline,) = [t for t in study.get_trials() if t.params == defaults and t.state == TrialState.COMPLETE]
    assert baseline.value is not None and study.best_value > baseline.value, (study.best_value, baseline.value)


def test_the_same_command_again_runs_nothing(chain: Chain) -> None:
    assert chain.rerun_code == 0, chain.rerun_output
    assert chain.runs_after_rerun == chain.runs_before_rerun
    # No trial was run, not even a cached one (its line: "mltf_flow: trial 3 [complete] ..."; Luigi's task ids
    # hold the project's path, which may contain the word).
    assert not re.search(r"\btrial \d+ \[", chain.rerun_output), chain.rerun_output


def test_train_from_the_study_is_the_best_trials_run(chain: Chain) -> None:
    assert chain.from_study_code == 0
    assert chain.runs_after_from_study == chain.runs_after_rerun  # complete already: the best trial's run


def test_optuna_dashboard_serves_the_study_where_the_study_run_links(chain: Chain, tmp_path: Path) -> None:
    (study_run,) = [r for r in runs(chain.uri) if r.data.tags.get("mltf.role") == "study"]
    link = study_run.data.tags["mltf.study.dashboard"]
    assert link.startswith("http://127.0.0.1:8080/dashboard/studies/")
    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "mltf-flow"), "optuna-dashboard", "--port", str(port)], cwd=REPO,
                                env={**os.environ, **chain.env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        page = link.replace(":8080/", f":{port}/")

        def served() -> bytes | None:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    return bytes(response.read())
            except OSError:
                return None

        studies = json.loads(wait_until(served, 60, "optuna-dashboard"))  # type: ignore[arg-type]
        assert chain.study_name in [s["study_name"] for s in studies["study_summaries"]]
        with urllib.request.urlopen(page, timeout=10) as response:
            assert response.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.browser
@pytest.mark.server
def test_mlflow_ui_shows_the_study_run_with_its_trial_runs(chain: Chain, tmp_path: Path) -> None:
    """The MLflow UI over the chain's store (a real `mlflow server`, Debian's chromium): the invocation's parent
    run expands to the study run, the study run to its trials, each named after its number and parameters.
    Screenshot: test-artifacts/screenshots/mlflow_ui_study.png."""
    from mltf_flow.run_description import experiment_link
    from tests.helpers import served_store
    from tests.integration.mlflow_ui import browser_page, screenshots_dir

    (study_run,) = [r for r in runs(chain.uri) if r.data.tags.get("mltf.role") == "study"]
    trials = sorted((r for r in _trial_runs(chain) if r.data.tags["mlflow.parentRunId"] == study_run.info.run_id),
                    key=lambda r: int(r.data.tags["mltf.trial.number"]))
    parent_id = study_run.data.tags["mlflow.parentRunId"]
    with served_store(chain.uri, tmp_path / "server") as url, browser_page() as page:
        page.goto(f"{url}/{experiment_link(study_run.info.experiment_id)}")

        def row(run_id: str) -> Any:
            return page.locator(f"[role=row][row-id='{run_id}']").first

        expand = "button[data-component-id*='runnamecellrenderer']"
        row(parent_id).locator(expand).click()
        row(study_run.info.run_id).get_by_text(study_run.data.tags["mlflow.runName"], exact=True).wait_for()
        row(study_run.info.run_id).locator(expand).click()
        for trial in (trials[0], trials[-1]):
            name = trial.data.tags["mlflow.runName"]
            assert name.startswith(f"trial {trial.data.tags['mltf.trial.number']}: train (")
            row(trial.info.run_id).get_by_text(name, exact=True).wait_for()
        page.screenshot(path=screenshots_dir() / "mlflow_ui_study.png")
