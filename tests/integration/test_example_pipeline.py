"""The example pipeline end to end with `luigi --module pipelines Train`, on the embedded sqlite store:
what a first run records, that a rerun does nothing, and that changes rerun exactly what they affect.

Two full runs serve every test (module fixtures): ``first_run`` (luigi) and ``yaml_run`` (the same pipeline
from scratch through pipeline.yaml, elsewhere, with the GDS data path); the tests that change something
rerun only what they change on top of them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import EXAMPLE, assert_quiet_console, git_project, run_luigi, run_mltf, seed_store
from tests.integration.ddp_checks import assert_ddp_run
from tests.integration.mlflow_queries import client, parents, runs, sqlite_uri, step_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_run_console(tmp_path_factory: pytest.TempPathFactory, jet_sample: Path, store_template: Path
                      ) -> tuple[dict[str, str], str, str]:
    """``first_run`` and what its console showed."""
    work = seed_store(tmp_path_factory.mktemp("example") / "work", store_template)
    env = {"MLTF_FLOW_WORK_DIR": str(work)}
    result = run_luigi(*train_args(jet_sample), env=env)
    assert result.returncode == 0, result.output
    return env, sqlite_uri(work), result.output


@pytest.fixture(scope="module")
def first_run(first_run_console: tuple[dict[str, str], str, str]) -> tuple[dict[str, str], str]:
    env, uri, _ = first_run_console
    return env, uri


@dataclass(frozen=True)
class YamlRun:
    project: Path  # a git checkout of the example project (test_uncommitted_edit... edits it)
    args: list[str]  # the `mltf-flow run` command line that made the run
    env: dict[str, str]
    uri: str
    scratch: Path  # the gds section's node-local scratch
    train: Any  # its train run, as it was before any test changed the checkout


@pytest.fixture(scope="module")
def yaml_run(tmp_path_factory: pytest.TempPathFactory, jet_sample: Path, store_template: Path) -> YamlRun:
    """The same pipeline as ``first_run`` (dataset, epochs 2) run from scratch a second time, differing from it
    in all that must not change a result: the front end (pipeline.yaml, ``mltf-flow run``), where the project
    is (a git checkout), the store (one of its own), and how training reads its features (the ``local``
    profile's gds section enabled: the posix backend on this CPU machine, after a copy to node-local scratch).
    Shared because four tests each need a full run made apart from first_run, and one serves them all (a full
    run costs ~40 s here): its weights and keys must equal first_run's, luigi must find its runs, its
    training must have read through the GDS path, and an uncommitted edit of its checkout must rerun only
    train."""
    base = tmp_path_factory.mktemp("yaml-run")
    project = git_project(EXAMPLE, base / "checkout")
    work = seed_store(base / "work", store_template)
    scratch = base / "nvme"
    gds = {"enabled": True, "scratch": str(scratch), "cufile": {"allow_compat_mode": True, "log_level": "WARN"}}
    env = {"MLTF_FLOW_WORK_DIR": str(work), "MLTF_FLOW_SET__LOCAL__GDS": json.dumps(gds)}
    args = ["run", str(project), "--step", "train", "-P", f"stage.dataset={jet_sample}", "-P", "epochs=2"]
    result = run_mltf(*args, env=env)
    assert result.returncode == 0, result.output
    uri = sqlite_uri(work)
    (train,) = step_runs(uri, "train")
    return YamlRun(project, args, env, uri, scratch, train)


def train_args(jet_sample: Path, *extra: str) -> list[str]:
    return ["--module", "pipelines", "Train", "--dataset", str(jet_sample), "--epochs", "2", *extra]


def test_first_run_console_is_quiet_and_says_the_epochs(first_run_console: tuple[dict[str, str], str, str]) -> None:
    output = first_run_console[2]
    assert_quiet_console(output)
    # The train step's summary line, read from the run's metrics (mltf_flow.metric_progress).
    assert "mltf_flow: train: epoch 2/2, train_loss " in output, output


def test_first_run_records_parent_children_metrics_and_model(first_run: tuple[dict[str, str], str],
                                                            tmp_path: Path) -> None:
    _, uri = first_run
    parent = parents(uri)[0]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs(uri) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["mltf.step"] for r in children) == ["features", "train"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mltf.complete"] == "true"
        assert run.data.tags["mltf.exit_code"] == "0"
        for tag in ("mltf.cache_key", "mltf.code_hash", "mltf.env_hash", "mltf.inputs", "mltf.task_id"):
            assert run.data.tags[tag], tag
    train = next(r for r in children if r.data.tags["mltf.step"] == "train")
    features = next(r for r in children if r.data.tags["mltf.step"] == "features")
    assert train.data.params["epochs"] == "2"
    assert '"features": "' + features.info.run_id in train.data.tags["mltf.upstream_run_ids"]
    assert "digest" in features.data.tags["mltf.inputs"]
    history = client(uri).get_metric_history(train.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [0, 1]
    assert history[-1].value > 0.7  # well above chance (0.5) on the synthetic quark/gluon sample
    models = client(uri).search_logged_models(
        experiment_ids=[train.info.experiment_id], filter_string=f"source_run_id = '{train.info.run_id}'"
    )
    assert [m.name for m in models] == ["jet_tagger"]
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        signature = mlflow.models.get_model_info(f"models:/{models[0].model_id}").signature
    finally:
        mlflow.set_tracking_uri(None)
    assert signature is not None and signature.inputs.to_dict()[0]["type"] == "tensor"
    artifacts = {a.path for a in client(uri).list_artifacts(train.info.run_id)}
    assert {"metrics.json", "mltf"} <= artifacts
    logs = {a.path for a in client(uri).list_artifacts(features.info.run_id, "mltf")}
    assert {"mltf/step.log", "mltf/inputs"} <= logs

    # What the MLflow UI shows (mltf_flow.run_description): names that tell runs apart, the lineage as a
    # description, the inputs as datasets, the experiment as a training one, no "None" for a missing value.
    assert parent.data.tags["mlflow.runName"] == "jet_tagging: train (epochs=2)"
    assert (train.data.tags["mlflow.runName"], features.data.tags["mlflow.runName"]) == ("train (epochs=2)", "features")
    note = train.data.tags["mlflow.note.content"]
    assert f"runs/{features.info.run_id}" in note and "**Outcome:** command exited 0" in note
    assert f"runs/{train.info.run_id}" in parent.data.tags["mlflow.note.content"]
    digest = json.loads(features.data.tags["mltf.inputs"])[0]["digest"]
    assert [i.dataset.digest for i in features.inputs.dataset_inputs] == [digest[:36]]
    assert {i.dataset.name for i in train.inputs.dataset_inputs} >= {"features.mltft"}
    experiment = client(uri).get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "None" not in {value for run in (parent, *children) for value in run.data.tags.values()}

    # The picture of the invocation (mltf_flow.pipeline_svg): `luigi --module` leaves no summary to a caller,
    # so its main process draws it at exit from what the store says.
    svg = ET.fromstring(Path(client(uri).download_artifacts(parent.info.run_id, "mltf/pipeline.svg",
                                                            str(tmp_path))).read_text())
    states = {g.get("data-step"): g.get("data-state") for g in svg.iter("{http://www.w3.org/2000/svg}g")}
    assert {states["features"], states["train"]} == {"ran"} and set(states.values()) <= {"ran", "staged"}, states


def test_train_ran_as_two_rank_ddp_with_identical_weights(
    first_run: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    _, uri = first_run
    (train,) = step_runs(uri, "train")
    digest = assert_ddp_run(uri, train, tmp_path)  # the local profile's 2 workers are the 2 ranks
    assert train.data.tags["weights_sha256"] == digest
    assert train.data.tags["weights_identical_across_ranks"] == "true"
    assert train.data.tags["mltf.launcher"] == "ddp"
    assert train.data.tags["mltf.checkpoint.epoch"] == "1"  # one checkpoint per epoch (epochs 0 and 1)


def test_rerun_creates_no_run(first_run: tuple[dict[str, str], str], jet_sample: Path) -> None:
    env, uri = first_run
    before = len(runs(uri))
    result = run_luigi(*train_args(jet_sample), env=env)
    assert result.returncode == 0, result.output
    assert "Did not run any tasks" in result.output
    assert len(runs(uri)) == before


def test_changed_parameters_rerun_exactly_the_affected_steps(
    first_run: tuple[dict[str, str], str], jet_sample: Path
) -> None:
    env, uri = first_run
    manifest = next((Path(env["MLTF_FLOW_WORK_DIR"]) / "datasets").glob("*/manifest.json"))
    staged_at = manifest.stat().st_mtime_ns
    n_features, n_train = len(step_runs(uri, "features")), len(step_runs(uri, "train"))
    # One rank (the world size is not part of a step's key): what reruns is the point, not DDP, and a second
    # rank would cost each of the two trainings below another torch process on this 2-core machine.
    one_rank = ("--world-size", "1")

    result = run_luigi(*train_args(jet_sample, "--lr", "0.01", *one_rank), env=env)
    assert result.returncode == 0, result.output
    assert (len(step_runs(uri, "features")), len(step_runs(uri, "train"))) == (n_features, n_train + 1)

    # The same value spelled differently is the same key: no new run.
    result = run_luigi(*train_args(jet_sample, "--lr", "1e-2", *one_rank), env=env)
    assert result.returncode == 0, result.output
    assert len(step_runs(uri, "train")) == n_train + 1

    result = run_luigi(*train_args(jet_sample, "--ExtractFeatures-max-constituents", "16", *one_rank), env=env)
    assert result.returncode == 0, result.output
    assert (len(step_runs(uri, "features")), len(step_runs(uri, "train"))) == (n_features + 1, n_train + 2)
    assert manifest.stat().st_mtime_ns == staged_at  # StageDataset did not run again


def test_fresh_runs_give_bit_identical_weights(first_run: tuple[dict[str, str], str], yaml_run: YamlRun) -> None:
    """A second run from scratch (another store, so nothing is cached) trains the same weights under the same
    key (neither depends on the front end, where the project is checked out, or the data path)."""
    _, uri = first_run
    first = step_runs(uri, "train")[0]  # first_run's: the earliest train run of its store
    second = yaml_run.train
    assert second.data.tags["weights_sha256"] == first.data.tags["weights_sha256"]
    assert second.data.tags["mltf.cache_key"] == first.data.tags["mltf.cache_key"]


def test_training_reads_its_features_through_the_gds_path(yaml_run: YamlRun) -> None:
    """With the profile's gds section enabled (CPU machine: the posix backend): the workers get a cufile.json
    through CUFILE_ENV_PATH_JSON, the features file is copied to the node-local scratch before training, and
    the run records which backend loaded the data and how fast."""
    scratch = yaml_run.scratch
    tags, metrics = yaml_run.train.data.tags, yaml_run.train.data.metrics
    assert tags["mltf.data.backend"] == "posix"  # no GPU here: auto falls back to POSIX reads
    source = Path(tags["mltf.data.source"])
    assert source.is_relative_to(scratch) and source.is_file()  # staged to node-local scratch once
    assert metrics["data_load_gbps"] > 0 and metrics["data_load_seconds"] >= 0
    config = Path(tags["mltf.data.cufile_json"])  # what the training process saw
    # ... written by the cluster before its workers started (one directory per cluster: the edit test's
    # rerun adds another)
    assert config.name == "cufile.json" and config.parent.parent == scratch, config
    assert config.parent.name.startswith("mltf-gds-"), config
    doc = json.loads(config.read_text())
    assert doc["properties"]["allow_compat_mode"] is True and doc["logging"]["level"] == "WARN"


def test_uncommitted_edit_reruns_only_the_edited_step(yaml_run: YamlRun, tmp_path: Path) -> None:
    """Through pipeline.yaml (`mltf-flow run`) on a git checkout of the example project."""
    with open(yaml_run.project / "train.py", "a") as handle:
        handle.write("# a one-line uncommitted edit\n")
    # Before it runs, `status --graph` (run's command line, one word changed) says what will rerun and why.
    (features,) = step_runs(yaml_run.uri, "features")
    status = run_mltf("status", *yaml_run.args[1:], "--graph", env=yaml_run.env)
    assert status.returncode == 0, status.output
    graph = status.stdout
    assert "train  will run  (key " in graph and f"vs run {yaml_run.train.info.run_id[:8]}…" in graph, graph
    assert "why: code changed: train.py" in graph, graph
    assert f"features  cached  run {features.info.run_id[:8]}…  (key {features.data.tags['mltf.cache_key'][:8]}…)" \
        in graph, graph
    assert graph.count("why:") == 1, graph  # nothing else changed
    result = run_mltf(*yaml_run.args, env=yaml_run.env)
    assert result.returncode == 0, result.output
    uri = yaml_run.uri
    assert (len(step_runs(uri, "features")), len(step_runs(uri, "train"))) == (1, 2)
    edited = step_runs(uri, "train")[-1]
    assert edited.info.run_id != yaml_run.train.info.run_id
    assert edited.data.tags["mltf.git_dirty"] == "true"
    assert edited.data.tags["mltf.upstream_run_ids"] == yaml_run.train.data.tags["mltf.upstream_run_ids"]
    # The run keeps the uncommitted change itself, linked from its description.
    diff = Path(client(uri).download_artifacts(edited.info.run_id, "mltf/uncommitted.diff", str(tmp_path)))
    assert "+# a one-line uncommitted edit" in diff.read_text()
    assert "mltf/uncommitted.diff" in edited.data.tags["mlflow.note.content"]


def test_example_project_still_runs_under_plain_mlflow_run(tmp_path: Path) -> None:
    from tests.helpers import run_cmd

    result = run_cmd(
        ["mlflow", "run", str(EXAMPLE), "-e", "generate", "--env-manager", "local", "-P", f"out_dir={tmp_path}/d",
         "-P", "n_files=1", "-P", "events_per_file=20"],
        env={"MLFLOW_TRACKING_URI": sqlite_uri(tmp_path / "work")},  # the migrated store the test starts with
    )
    assert result.returncode == 0, result.output
    assert (tmp_path / "d" / "jets_000.root").is_file()


def test_luigi_and_pipeline_yaml_reuse_each_others_runs(
    first_run: tuple[dict[str, str], str], yaml_run: YamlRun, jet_sample: Path
) -> None:
    """`luigi --module pipelines Train` (Python classes) and `mltf-flow run pipelines/jet_tagging --step train`
    (pipeline.yaml) describe the same steps: each finds the runs the other made (first_run's were made by
    luigi, yaml_run's by pipeline.yaml)."""
    env, uri = first_run
    before = len(runs(uri))
    yaml_args = ["run", str(EXAMPLE), "--step", "train", "-P", f"stage.dataset={jet_sample}", "-P", "epochs=2"]
    result = run_mltf(*yaml_args, env=env)
    assert result.returncode == 0, result.output
    assert "Did not run any tasks" in result.output
    assert len(runs(uri)) == before

    before = len(runs(yaml_run.uri))
    result = run_luigi(*train_args(jet_sample), env=yaml_run.env)
    assert result.returncode == 0, result.output
    assert "Did not run any tasks" in result.output
    assert len(runs(yaml_run.uri)) == before


@pytest.mark.browser
@pytest.mark.server
def test_mlflow_ui_shows_readable_lineage(first_run: tuple[dict[str, str], str], tmp_path: Path) -> None:
    """What a person sees in the MLflow UI (a real `mlflow server` over first_run's store, Debian's chromium):
    the experiment opens on its runs table, the parent is named after pipeline, target and what differs from
    the defaults, the children after their step and parameters, the Dataset column shows what each step read,
    and the train run's description links to the features run and to the dataset's manifest (links followed).
    Costs ~25 s on an idle machine (server start, one load of the UI), no pipeline run.
    Screenshots: test-artifacts/screenshots/mlflow_ui_*.png."""
    from mltf_flow.run_description import experiment_link
    from tests.helpers import served_store
    from tests.integration.mlflow_ui import browser_page, screenshots_dir

    _, uri = first_run
    parent = parents(uri)[0]  # first_run's (later tests of this module add parents with other parameters)
    children = {r.data.tags["mltf.step"]: r for r in runs(uri)
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    train, features = children["train"], children["features"]
    digest = json.loads(features.data.tags["mltf.inputs"])[0]["digest"]
    shots = screenshots_dir()
    with served_store(uri, tmp_path / "server") as url, browser_page() as page:
        page.goto(f"{url}/{experiment_link(parent.info.experiment_id)}")
        parent_row = page.locator(f"[role=row][row-id='{parent.info.run_id}']").first
        parent_row.get_by_text("jet_tagging: train (epochs=2)", exact=True).wait_for()
        assert "/runs" in page.url  # the training view's runs table, not the GenAI overview
        parent_row.locator("button[data-component-id*='runnamecellrenderer']").click()  # expand the children

        def row(run: Any) -> Any:
            return page.locator(f"[role=row][row-id='{run.info.run_id}']")

        row(train).get_by_text("train (epochs=2)", exact=True).wait_for()
        row(features).get_by_text("features", exact=True).wait_for()
        dataset = row(features).locator("[col-id*='Dataset']")
        dataset.get_by_text(f"sample ({digest[:12]}", exact=False).wait_for()
        row(train).locator("[col-id*='Dataset']").get_by_text("features.mltft", exact=False).wait_for()
        page.screenshot(path=shots / "mlflow_ui_runs.png")

        row(train).get_by_text("train (epochs=2)", exact=True).click()
        page.get_by_text("Outcome:", exact=False).wait_for()  # the description, rendered
        page.get_by_text(f"manifest digest {digest[:16]}", exact=False).wait_for()
        page.get_by_text("Show more", exact=True).first.click()  # the whole description, for the screenshot
        page.get_by_text("Description", exact=True).first.scroll_into_view_if_needed()
        page.screenshot(path=shots / "mlflow_ui_train_run.png")

        # MLflow opens description links in a new tab (a second load of the whole app): they are followed in
        # this one, where the same relative link leads to the same page.
        link = page.get_by_role("link", name="features", exact=True).first
        href = link.get_attribute("href")
        assert href is not None and href.startswith("#/") and features.info.run_id in href
        page.goto(f"{url}/{href}")
        page.get_by_text("step features (entry point features)", exact=False).wait_for()
        page.screenshot(path=shots / "mlflow_ui_features_run.png")

        page.go_back()
        href = page.get_by_role("link", name="manifest", exact=True).first.get_attribute("href")
        assert href is not None and href.startswith("#/") and features.info.run_id in href
        page.goto(f"{url}/{href}")
        page.get_by_text(digest, exact=False).first.wait_for()  # the manifest's own text, in the artifact viewer
        page.screenshot(path=shots / "mlflow_ui_dataset_manifest.png")
