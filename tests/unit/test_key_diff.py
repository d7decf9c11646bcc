"""Why a step will rerun (mltf_flow.key_diff): a key's ingredients as a record, and the phrases that say what
changed between two records, on values; and a record of a real resolved step holds no secret."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import luigi
import pytest

from mltf_flow.invocation import INVOCATION_ENV
from mltf_flow.key_diff import key_record, record_from_run, why_changed
from mltf_flow.pipeline import PipelineStep

OLD: dict[str, Any] = {
    "record": 1, "key": "k-old", "key_version": 2, "pipeline": "jets", "step": "features", "project": "jets",
    "entry_point": "features", "command": "python features.py --max {max_constituents}",
    "params": {"max_constituents": 64, "manifest": {"from": "d-old", "output": "manifest"}},
    "code": {"hash": "c1", "files": {"features.py": "a1", "common.py": "b1"}},
    "env": {"hash": "e1", "manager": "local", "files": {"python_env.yaml": "p1"}},
    "upstream": {"stage": "d-old", "calib": "u1"},
    "inputs": [{"uri": "file:///data/jets", "digest": "d-old"}],
    "execution": None,
}


def changed(**fields: Any) -> dict[str, Any]:
    new = copy.deepcopy(OLD)
    new.update(fields)
    new["key"] = "k-new"
    return new


def test_no_earlier_run_and_equal_keys() -> None:
    assert why_changed(None, OLD) == ["no earlier run"]
    assert why_changed(OLD, copy.deepcopy(OLD)) == []


def test_a_parameter_change_names_old_and_new_values() -> None:
    new = changed(params={**OLD["params"], "max_constituents": 32})
    assert why_changed(OLD, new) == ["parameter max_constituents 64 → 32"]
    added = changed(params={**OLD["params"], "seed": 7})
    assert why_changed(OLD, added) == ["parameter seed added (= 7)"]


def test_code_changes_name_the_files() -> None:
    new = changed(code={"hash": "c2", "files": {"features.py": "a2", "common.py": "b1", "new.py": "n1"}})
    assert why_changed(OLD, new) == ["code changed: features.py", "code added: new.py"]
    gone = changed(code={"hash": "c3", "files": {"features.py": "a1"}})
    assert why_changed(OLD, gone) == ["code removed: common.py"]


def test_environment_changes_name_the_file_or_the_manager() -> None:
    assert why_changed(OLD, changed(env={"hash": "e2", "manager": "local", "files": {"python_env.yaml": "p2"}})) \
        == ["environment changed (python_env.yaml)"]
    assert why_changed(OLD, changed(env={"hash": "e3", "manager": "uv", "files": {"python_env.yaml": "p1"}})) \
        == ["environment changed (env manager local → uv)"]


def test_a_new_dataset_digest_is_said_once_as_the_input_change() -> None:
    new = changed(upstream={"stage": "d-new", "calib": "u1"}, inputs=[{"uri": "file:///data/jets", "digest": "d-new"}],
                  params={**OLD["params"], "manifest": {"from": "d-new", "output": "manifest"}})
    assert why_changed(OLD, new) == ["input dataset changed: file:///data/jets (digest d-old → d-new)"]


def test_an_upstream_step_with_a_new_key_is_named() -> None:
    new = changed(upstream={"stage": "d-old", "calib": "u2"})
    assert why_changed(OLD, new) == ["upstream calib changed (key u1 → u2)"]


def test_command_and_recipe_changes() -> None:
    assert why_changed(OLD, changed(command="python features.py")) == ["command template changed (MLproject)"]
    assert why_changed(OLD, changed(key_version=3)) == ["cache key recipe changed (v2 → v3)"]


def test_own_only_compares_what_is_known_before_upstream_steps_ran() -> None:
    new = changed(upstream={}, inputs=[], params={"max_constituents": 64})
    assert why_changed(OLD, new, own_only=True) == []
    new["code"] = {"hash": "c2", "files": {"features.py": "a2", "common.py": "b1"}}
    assert why_changed(OLD, new, own_only=True) == ["code changed: features.py"]


def test_a_run_without_a_record_is_compared_on_its_tags_and_logged_params() -> None:
    old = record_from_run({"mltf.cache_key": "k-old", "mltf.code_hash": "c1", "mltf.env_hash": "e1"},
                          {"max_constituents": "64", "lr": "0.1"})
    same_values = changed(params={"max_constituents": 64, "lr": 0.1}, code={"hash": "c1", "files": {}})
    assert why_changed(old, same_values) == ["upstream or inputs changed"]
    new = changed(params={"max_constituents": 32, "lr": 0.1}, code={"hash": "c9", "files": {"x.py": "1"}})
    assert why_changed(old, new) == ["code changed", "parameter max_constituents 64 → 32"]


MLPROJECT = """\
name: demo
python_env: python_env.yaml
entry_points:
  fit:
    parameters: {lr: {type: float, default: 0.1}, api_token: {type: string, default: ""},
                 db: {type: string, default: ""}}
    command: "python fit.py --lr {lr} --api-token {api_token} --db {db}"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    (root / "python_env.yaml").write_text("python: '3.11'\ndependencies: []\n")
    (root / "pipeline.yaml").write_text("steps:\n  fit: {entry_point: fit}\n")
    (root / "fit.py").write_text("print('fit')\n")
    return root


def _record(project: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv(INVOCATION_ENV, uuid.uuid4().hex)  # a new invocation, a new task object: read afresh
    luigi.task_register.Register.clear_instance_cache()
    step = PipelineStep(project_dir=str(project), run_step="fit",
                        overrides={"api_token": "CANARY-tok", "db": "postgresql://u:CANARY-pw@host/db", "lr": "0.2"})
    value = step.describe()
    assert value is not None
    return key_record(value)


def test_the_record_of_a_resolved_step_names_its_ingredients_and_no_secret(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _record(project, monkeypatch)
    text = json.dumps(record)  # JSON as logged
    assert "CANARY" not in text
    assert record["params"] == {"lr": 0.2, "api_token": "***", "db": "postgresql://u:***@host/db"}
    assert set(record["code"]["files"]) >= {"fit.py"} and list(record["env"]["files"]) == ["python_env.yaml"]
    with open(project / "fit.py", "a") as handle:
        handle.write("# edited\n")
    (project / "python_env.yaml").write_text("python: '3.11'\ndependencies: [numpy]\n")
    assert why_changed(record, _record(project, monkeypatch)) == [  # code: auto covers the env file too
        "code changed: fit.py, python_env.yaml", "environment changed (python_env.yaml)"]
