"""The real SLURM's ``sbatch --test-only`` verdict on the script of an ``mlflow run --backend mltf`` job
(mltf_flow.slurm.preflight.would_accept), for the repository's CI profiles on tests/infra/slurm.sh's cluster
(one node, 4 GPUs in gres.conf, partition ``debug``). The script's text is tested in
tests/unit/backend/test_job_script.py."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.backend.config import parse_backend_config
from mltf_flow.backend.script import ScriptInputs, render_script
from mltf_flow.slurm import preflight
from tests.helpers import REPO_PROFILES, isolate_profiles

pytestmark = pytest.mark.slurm

RUN_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_profiles(tmp_path, monkeypatch, REPO_PROFILES)


def script_for(tmp_path: Path, raw: dict[str, Any], project: str = "project") -> str:
    project_dir = tmp_path / project
    project_dir.mkdir(exist_ok=True)
    job_dir = tmp_path / "work" / "jobs" / RUN_ID
    inputs = ScriptInputs(
        run_id=RUN_ID, experiment_id="7", tracking_uri="http://127.0.0.1:5000", project_dir=str(project_dir),
        job_dir=str(job_dir), spec_path=str(job_dir / "spec.json"), job_name="mltf-jet_tagging-train",
        display_command="python train.py", entry_point="train", env_manager="local",
    )
    return render_script(parse_backend_config(raw), inputs)


def test_slurm_accepts_the_ci_profiles_script(tmp_path: Path) -> None:
    accepted, answer = preflight.would_accept(script_for(tmp_path, {"profile": "slurm-ci"}))
    assert accepted, answer
    assert "to start at" in answer


def test_slurm_accepts_all_four_gpus(tmp_path: Path) -> None:
    accepted, answer = preflight.would_accept(script_for(tmp_path, {"profile": "slurm-ci-gpu", "gres": "gpu:4",
                                                                 "time": 10}))
    assert accepted, answer


def test_slurm_rejects_more_gpus_than_the_node_has(tmp_path: Path) -> None:
    accepted, answer = preflight.would_accept(script_for(tmp_path, {"profile": "slurm-ci", "gres": "gpu:8"}))
    assert not accepted
    assert "Requested node configuration is not available" in answer


def test_slurm_rejects_an_unknown_partition(tmp_path: Path) -> None:
    accepted, answer = preflight.would_accept(script_for(tmp_path, {"profile": "slurm-ci", "partition": "nosuch"}))
    assert not accepted
    assert "invalid partition" in answer.lower()


def test_would_accept_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    preflight.would_accept(script_for(tmp_path, {"profile": "slurm-ci"}))
    assert list((tmp_path / "tmp").iterdir()) == []


def test_project_path_with_a_space(tmp_path: Path) -> None:
    accepted, answer = preflight.would_accept(script_for(tmp_path, {"profile": "slurm-ci"}, project="my project"))
    assert accepted, answer
