"""The example pipeline with a profile whose gds section is enabled (CPU machine: the posix backend): the
workers get a cufile.json through CUFILE_ENV_PATH_JSON, the features file is copied to the node-local scratch
before training, and the run records which backend loaded the data and how fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_luigi
from tests.integration.mlflow_queries import sqlite_uri, step_runs

pytestmark = pytest.mark.slow


def test_training_reads_its_features_through_the_gds_path(jet_sample: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "nvme"
    gds = {"enabled": True, "scratch": str(scratch), "cufile": {"allow_compat_mode": True, "log_level": "WARN"}}
    env = {"MLTF_FLOW_WORK_DIR": str(tmp_path / "work"), "MLTF_FLOW_SET__LOCAL__GDS": json.dumps(gds)}
    result = run_luigi("--module", "pipelines", "Train", "--dataset", str(jet_sample), "--epochs", "1", env=env)
    assert result.returncode == 0, result.output[-4000:]
    (train,) = step_runs(sqlite_uri(tmp_path / "work"), "train")
    tags, metrics = train.data.tags, train.data.metrics
    assert tags["mltf.data.backend"] == "posix"  # no GPU here: auto falls back to POSIX reads
    source = Path(tags["mltf.data.source"])
    assert source.is_relative_to(scratch) and source.is_file()  # staged to node-local scratch once
    assert metrics["data_load_gbps"] > 0 and metrics["data_load_seconds"] >= 0
    (config,) = scratch.glob("mltf-gds-*/cufile.json")  # written by the cluster before its workers started
    assert tags["mltf.data.cufile_json"] == str(config)  # what the training process saw
    doc = json.loads(config.read_text())
    assert doc["properties"]["allow_compat_mode"] is True and doc["logging"]["level"] == "WARN"
