"""The pipeline against a real `mlflow server` process: runs, artifacts and models go through HTTP, and
completeness checks use the REST API (no mlflow import) with a prefetch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import MlflowServer, run_luigi
from tests.integration.mlflow_queries import client, runs, step_runs

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_pipeline_against_mlflow_server(mlflow_server: MlflowServer, jet_sample: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"MLTF_FLOW_TRACKING_URI": mlflow_server.uri, "MLTF_FLOW_EXPERIMENT": "server-e2e"}
    args = ["--module", "pipelines", "Train", "--dataset", str(jet_sample), "--epochs", "2"]
    result = run_luigi(*args, env=env)
    assert result.returncode == 0, result.output
    train = step_runs(mlflow_server.uri, "train", "server-e2e")
    assert len(train) == 1 and train[0].data.tags["mltf.complete"] == "true"
    assert train[0].info.artifact_uri.startswith("mlflow-artifacts:")
    assert len(client(mlflow_server.uri).get_metric_history(train[0].info.run_id, "val_loss")) == 2
    # Nothing was written to the local work dir's store.
    assert not (Path(os.environ["MLTF_FLOW_WORK_DIR"]) / "mlflow.db").exists()

    before = len(runs(mlflow_server.uri, "server-e2e"))
    result = run_luigi(*args, env=env)
    assert result.returncode == 0 and "Did not run any tasks" in result.output, result.output
    assert len(runs(mlflow_server.uri, "server-e2e")) == before

    # In-process completeness check: REST only, a handful of round trips for the whole DAG.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import pipelines
    from mltf_flow.run_index import run_index

    task = pipelines.Train(dataset=str(jet_sample), epochs=2)
    assert task.complete()
    index = run_index(mlflow_server.uri)
    assert index.round_trips <= 3  # experiment id + one prefetch page (+ slack)


def test_rest_index_agrees_with_mlflow_client(mlflow_server: MlflowServer) -> None:
    from mltf_flow.run_index import RestRunIndex

    c = client(mlflow_server.uri)
    exp = c.create_experiment("index-agreement")
    made = {}
    for i, (status, complete) in enumerate([("FINISHED", True), ("FINISHED", False), ("FAILED", False),
                                            ("RUNNING", False), ("FINISHED", True)]):
        run = c.create_run(exp, tags={"mltf.cache_key": "k1" if i in (0, 4) else f"k{i + 1}"})
        if complete:
            c.set_tag(run.info.run_id, "mltf.complete", "true")
        if status != "RUNNING":
            c.set_terminated(run.info.run_id, status)
        made[i] = run.info.run_id
    index = RestRunIndex(mlflow_server.uri)
    expected = c.search_runs(
        [exp], "tags.`mltf.cache_key` = 'k1' and attributes.status = 'FINISHED' and tags.`mltf.complete` = 'true'",
        order_by=["attributes.end_time DESC"], max_results=1,
    )[0].info.run_id
    found = index.find_complete("index-agreement", "k1")
    assert found is not None and found.run_id == expected == made[4]
    for key in ("k2", "k3", "k4"):  # FINISHED without mltf.complete (sys.exit(3)), FAILED, RUNNING
        assert index.find_complete("index-agreement", key) is None
    assert [r.run_id for r in index.find_with_status("index-agreement", "k4", "RUNNING")] == [made[3]]
    assert index.find_complete("no-such-experiment", "k1") is None
