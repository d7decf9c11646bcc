"""What a job runs and how it ended, on disk: JobSpec (spec.json, mltf_flow.backend.spec) written and read back,
refused from another version or when unreadable; JobRecord (status.json, mltf_flow.backend.record), where
a missing or unreadable record reads as none."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from mltf_flow.backend.record import ENDED, RUNNING, JobRecord, read_record
from mltf_flow.backend.spec import SPEC_VERSION, JobSpec
from mltf_flow.errors import ConfigError


def full_spec(tmp_path: Path) -> JobSpec:
    """Every field away from its default."""
    return JobSpec(
        run_id="r" * 32, experiment_id="3", tracking_uri="http://127.0.0.1:5000", project_dir=str(tmp_path / "p"),
        command="python train.py --token @@MLTF_SECRET_TOKEN@@ --lr 0.1", display_command="python train.py --lr 0.1",
        job_dir=str(tmp_path / "jobs" / "r"), env_manager="virtualenv", local_bin="/opt/py/bin",
        python_env={"python": "3.11", "dependencies": ["numpy==2.0"], "build_dependencies": ["pip"]},
        env_hash="abc123", env_root=str(tmp_path / "envs"), tasks=4, fabric={"kind": "socket", "socket_ifname": "lo"},
        interface="lo", kill_grace=3.5, forward_pre_timeout_signal=True, system_metrics=False, stderr_tail_lines=7,
        env={"MLTF_STEP": "train", "PYTHONUNBUFFERED": "1"}, helpers_dir="/opt/mltf",
    )


def test_spec_round_trip(tmp_path: Path) -> None:
    spec = full_spec(tmp_path)
    path = tmp_path / "jobs" / "r" / "spec.json"
    spec.write(path)
    assert JobSpec.read(path) == spec
    assert json.loads(path.read_text())["version"] == SPEC_VERSION
    assert [p.name for p in path.parent.iterdir()] == ["spec.json"]  # written atomically, no temporary left


def test_default_spec_round_trip(tmp_path: Path) -> None:
    spec = JobSpec(run_id="r1", experiment_id="0", tracking_uri="sqlite:////tmp/m.db", project_dir="/p",
                   command="true", display_command="true", job_dir=str(tmp_path))
    spec.write(tmp_path / "spec.json")
    read = JobSpec.read(tmp_path / "spec.json")
    assert read == spec
    assert (read.env_manager, read.tasks, read.env, read.python_env) == ("local", 1, {}, None)


def test_spec_paths(tmp_path: Path) -> None:
    spec = full_spec(tmp_path)
    assert spec.record_path == tmp_path / "jobs" / "r" / "status.json"
    assert spec.log_path("4242") == tmp_path / "jobs" / "r" / "slurm-4242.out"


@pytest.mark.parametrize("version", [SPEC_VERSION + 1, 0, "1", None])
def test_spec_of_another_version_is_refused(tmp_path: Path, version: object) -> None:
    path = tmp_path / "spec.json"
    data = asdict(full_spec(tmp_path))
    data["version"] = version
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"has version {version}, expected {SPEC_VERSION}") as err:
        JobSpec.read(path)
    assert "resubmit the run" in str(err.value)


def test_spec_without_a_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    data = asdict(full_spec(tmp_path))
    del data["version"]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="has version None"):
        JobSpec.read(path)


def test_spec_written_with_another_version(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    replace(full_spec(tmp_path), version=SPEC_VERSION + 1).write(path)
    with pytest.raises(ConfigError, match="submitted by another mltf_flow version"):
        JobSpec.read(path)


@pytest.mark.parametrize("text", ["{not json", "", "\x00\x01"])
def test_unreadable_spec(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="cannot be read"):
        JobSpec.read(path)


def test_missing_spec(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        JobSpec.read(tmp_path / "nope.json")


@pytest.mark.parametrize("text", ["[]", '"spec"', json.dumps({"version": SPEC_VERSION, "run_id": "r1"})])
def test_json_that_is_not_a_spec(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.json"
    path.write_text(text)
    with pytest.raises(ConfigError):
        JobSpec.read(path)


# ------------------------------------------------------------------------------------------- record


def test_record_round_trip(tmp_path: Path) -> None:
    record = JobRecord(job_id="4242", phase=ENDED, status="FAILED", exit_code=3, slurm_state="TIMEOUT",
                       reason="TimeLimit", tracked=True, host="vm")
    path = tmp_path / "job" / "status.json"
    before = time.time()
    record.write(path)
    read = read_record(path)
    assert read is not None
    assert replace(read, updated=0.0) == record
    assert before <= read.updated <= time.time()
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]


def test_record_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    JobRecord(job_id="1", phase=RUNNING, host="vm").write(path)
    running = read_record(path)
    assert running is not None and (running.phase, running.status) == (RUNNING, None)
    JobRecord(job_id="1", phase=ENDED, status="FINISHED", exit_code=0).write(path)
    ended = read_record(path)
    assert ended is not None and (ended.phase, ended.status, ended.exit_code) == (ENDED, "FINISHED", 0)


def test_missing_record(tmp_path: Path) -> None:
    assert read_record(tmp_path / "status.json") is None
    assert read_record(tmp_path) is None  # a directory


@pytest.mark.parametrize("text", ["{", "", "[]", '"x"', "null", '{"phase": "ended"}', '{"job_id": "1"}'])
def test_garbled_record(tmp_path: Path, text: str) -> None:
    path = tmp_path / "status.json"
    path.write_text(text)
    assert read_record(path) is None


def test_a_record_from_a_newer_writer_is_read(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text('{"job_id": "1", "phase": "ended", "status": "FAILED", "unknown_field": 1}')
    record = read_record(path)
    assert record is not None and (record.phase, record.status) == (ENDED, "FAILED")
