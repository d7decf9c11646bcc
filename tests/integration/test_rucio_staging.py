"""rucio:// staging against a real Rucio server (tests/infra/rucio: PyPI `rucio`, gunicorn, SQLite on 127.0.0.1)
with Rucio's own conveyor daemons copying files between POSIX RSEs: the pipeline from rucio://test:jets_v1,
reruns, a new dataset version, and the failures (each a clear error, none leaving a manifest)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.staging.rucio import adler32_file
from tests.helpers import EXAMPLE, Result, run_luigi, run_mltf
from tests.integration.mlflow_queries import client as mlflow_client
from tests.integration.mlflow_queries import runs, sqlite_uri

pytest_plugins = ["tests.integration.rucio_env"]
pytestmark = [pytest.mark.slow, pytest.mark.rucio]

JETS = "rucio://test:jets_v1"


@pytest.fixture(scope="module")
def jets(rucio_seeded: Any, jet_sample: Path) -> str:
    """The example sample as closed dataset test:jets_v1 on SITE_A (the remote site)."""
    rucio_seeded.upload_dataset("jets_v1", sorted(jet_sample.glob("*.root")))
    return JETS


def env_for(server: Any, work: Path, **rucio: Any) -> dict[str, str]:
    """A pipeline process's environment: the server's client config, our work dir, and rucio-demo's
    rucio section with ``rucio`` overrides."""
    env = {**server.env, "MLTF_FLOW_WORK_DIR": str(work)}
    if rucio:
        section = {"rse_expression": "FACILITY_NVME", "timeout": "5m", "stuck_grace": "1m", **rucio}
        env["MLTF_FLOW_SET__RUCIO_DEMO__RUCIO"] = json.dumps(section)
    return env


def stage(uri: str, env: dict[str, str]) -> Result:
    return run_luigi("--module", "pipelines", "StageDataset", "--dataset", uri, "--profile", "rucio-demo", env=env)


def manifests(work: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((work / "datasets").glob("*/manifest.json"))]


def facility_rules(site: Any, name: str, rse: str = "FACILITY_NVME") -> list[dict[str, Any]]:
    return [r for r in site.client().list_did_rules("test", name) if r["rse_expression"] == rse]


def role_runs(work: Path, role: str, step: str | None = None) -> list[Any]:
    return [r for r in runs(sqlite_uri(work), "jet_tagging") if r.data.tags.get("mltf.role") == role
            and (step is None or r.data.tags.get("mltf.step") == step)]


def test_pipeline_from_rucio_reruns_nothing_and_retrains_on_a_new_version(
    rucio_seeded: Any, rucio_daemons: Any, jets: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    env = env_for(rucio_seeded.server, work)
    # One rank: staging is the point, and a second rank would cost each of the two trainings another torch process.
    train = ("--module", "pipelines", "Train", "--dataset", jets, "--profile", "rucio-demo", "--epochs", "1",
             "--world-size", "1")
    first = run_luigi(*train, env=env)
    assert first.returncode == 0, first.output[-5000:]

    (rule,) = facility_rules(rucio_seeded, "jets_v1")
    assert rule["state"] == "OK" and rule["account"] == "root"
    (manifest,) = manifests(work)
    assert manifest["rule_id"] == rule["id"] and manifest["uri"] == jets and len(manifest["files"]) == 2
    catalogue = {f"test:{f['name']}": f for f in rucio_seeded.client().list_files("test", "jets_v1")}
    facility = rucio_seeded.rse_dir("FACILITY_NVME")
    for entry in manifest["files"]:
        path = Path(entry["path"])
        assert path.is_relative_to(facility), path  # read from the facility's copy, not the remote site
        assert adler32_file(path) == catalogue[entry["name"]]["adler32"] == entry["adler32"]

    (stage_run,) = role_runs(work, "stage")
    assert stage_run.info.status == "FINISHED"
    assert stage_run.data.tags["mltf.rucio.rule_id"] == rule["id"]
    assert stage_run.data.tags["mltf.manifest_digest"] == manifest["digest"]
    assert stage_run.inputs.dataset_inputs[0].dataset.source_type == "rucio"
    assert {a.path for a in mlflow_client(sqlite_uri(work)).list_artifacts(stage_run.info.run_id, "mltf")} == {
        "mltf/manifest.json"}
    (features,) = role_runs(work, "step", "features")
    assert json.loads(features.data.tags["mltf.inputs"])[0]["digest"] == manifest["digest"]
    (trained,) = role_runs(work, "step", "train")
    assert trained.data.tags["mltf.complete"] == "true"

    # From here on the same command is a nightly schedule's fires (docs/scheduling.md): fired by hand here.
    nightly = run_mltf("schedule", "add", "nightly", "--cron", "0 2 * * *", "--via", "none", "--pipeline",
                       "jet_tagging", "--luigi", *train, env=env)
    assert nightly.returncode == 0, nightly.output[-3000:]
    again = run_mltf("schedule", "fire", "nightly", env=env)  # same DID, same files: nothing to do
    assert again.returncode == 0, again.output[-3000:]
    assert len(role_runs(work, "stage")) == 1 and len(role_runs(work, "step")) == 2
    assert [r["id"] for r in facility_rules(rucio_seeded, "jets_v1")] == [rule["id"]]

    # A new version: one more file attached to the dataset. Staging, features and training run again.
    extra = tmp_path / "more"
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), "--out-dir", str(extra), "--n-files", "1",
                    "--events-per-file", "400", "--seed", "77"], check=True, capture_output=True)
    added = extra / "jets_v1_extra.root"
    next(extra.glob("*.root")).rename(added)
    rucio_seeded.attach_file("jets_v1", added)
    third = run_mltf("schedule", "fire", "nightly", env=env)
    assert third.returncode == 0, third.output[-5000:]
    fires = [r for r in role_runs(work, "pipeline") if r.data.tags.get("mltf.schedule") == "nightly"]
    assert [f.data.tags["mltf.schedule.outcome"] for f in fires] == ["nothing to do",
                                                                      "ran: stage, features, train"]
    (latest,) = manifests(work)
    assert len(latest["files"]) == 3 and latest["digest"] != manifest["digest"]
    assert latest["rule_id"] == rule["id"]  # the same rule, re-evaluated by Rucio: no second one
    assert [r["id"] for r in facility_rules(rucio_seeded, "jets_v1")] == [rule["id"]]
    assert len(role_runs(work, "stage")) == 2
    assert len(role_runs(work, "step", "features")) == 2 and len(role_runs(work, "step", "train")) == 2
    for old in (features, trained):  # the earlier results are untouched
        kept = mlflow_client(sqlite_uri(work)).get_run(old.info.run_id)
        assert kept.info.status == "FINISHED" and kept.data.tags["mltf.complete"] == "true"


def test_missing_did_fails_clearly(rucio_seeded: Any, tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = stage("rucio://test:no_such_dataset", env_for(rucio_seeded.server, work))
    assert result.returncode == 30, result.output[-3000:]
    assert "rucio://test:no_such_dataset does not exist in Rucio" in result.output
    assert not manifests(work)
    assert not runs(sqlite_uri(work), "datasets")


def test_rule_without_a_route_is_reported_stuck(rucio_seeded: Any, rucio_daemons: Any, jets: str,
                                                tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = stage(jets, env_for(rucio_seeded.server, work, rse_expression="ISLAND", stuck_grace=0))
    assert result.returncode == 30, result.output[-3000:]
    (rule,) = facility_rules(rucio_seeded, "jets_v1", "ISLAND")
    assert f"replication rule {rule['id']} for {jets} on ISLAND has been STUCK" in result.output
    assert "NO_SOURCES" in result.output
    assert not manifests(work)


def test_no_transfer_daemons_means_the_deadline(rucio_seeded: Any, rucio_daemons: Any, tmp_path: Path) -> None:
    files = []
    for i in range(2):
        files.append(tmp_path / f"paused_{i}.dat")
        files[-1].write_bytes(bytes([i]) * 4096)
    rucio_seeded.upload_dataset("paused_v1", files)
    rucio_daemons.pause()
    try:
        work = tmp_path / "work"
        result = stage("rucio://test:paused_v1", env_for(rucio_seeded.server, work, timeout=3))
    finally:
        rucio_daemons.resume()
    assert result.returncode == 30, result.output[-3000:]
    (rule,) = facility_rules(rucio_seeded, "paused_v1")
    assert re.search(rf"replication rule {rule['id']} .* did not complete within 3 s: state REPLICATING", result.output)
    assert "Are Rucio's transfer daemons running?" in result.output
    assert not manifests(work)


def test_corrupted_copy_is_fetched_again_in_download_mode(rucio_seeded: Any, jets: str, tmp_path: Path) -> None:
    work, cache = tmp_path / "work", tmp_path / "cache"
    env = env_for(rucio_seeded.server, work, mode="download", download_dir=str(cache))
    assert stage(jets, env).returncode == 0
    (manifest,) = manifests(work)
    victim = Path(manifest["files"][0]["path"])
    assert victim.is_relative_to(cache)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    victim.write_bytes(bytes(data))
    again = stage(jets, env)
    assert again.returncode == 0, again.output[-3000:]
    assert f"{victim} is incomplete or corrupt; fetching" in again.output
    assert adler32_file(victim) == manifest["files"][0]["adler32"]
    assert len(manifests(work)) == 1


def test_corrupted_replica_on_the_facility_rse_fails_with_the_checksums(
    rucio_seeded: Any, rucio_daemons: Any, tmp_path: Path
) -> None:
    source = tmp_path / "corrupt_0.dat"
    source.write_bytes(b"jets" * 2048)
    rucio_seeded.upload_dataset("corrupt_v1", [source])
    work = tmp_path / "work"
    env = env_for(rucio_seeded.server, work)
    assert stage("rucio://test:corrupt_v1", env).returncode == 0
    (manifest,) = manifests(work)
    replica = Path(manifest["files"][0]["path"])
    replica.write_bytes(b"JETS" * 2048)
    result = stage("rucio://test:corrupt_v1", env)
    assert result.returncode == 30, result.output[-3000:]
    assert f"checksum mismatch: {replica} (test:corrupt_0.dat) has adler32 {adler32_file(replica)}" in result.output
    assert "rucio replica declare-bad" in result.output
    assert not manifests(work)  # the stale manifest went first


def test_wrong_password_is_an_auth_error_that_never_shows_the_password(
    rucio_seeded: Any, jets: str, tmp_path: Path
) -> None:
    secret = "Wr0ng-pa55word-for-ddmlab"
    config = tmp_path / "rucio.cfg"
    config.write_text(rucio_seeded.server.client_cfg.read_text().replace("password = secret", f"password = {secret}"))
    work = tmp_path / "work"
    # A token cache of its own: a valid token cached by the other tests would be used without a login.
    (tmp_path / "tokens").mkdir()
    env = {**env_for(rucio_seeded.server, work), "RUCIO_CONFIG": str(config), "TMPDIR": str(tmp_path / "tokens")}
    result = stage(jets, env)
    assert result.returncode == 30, result.output[-3000:]
    assert "Rucio refused the credentials" in result.output
    assert secret not in result.output
    assert not manifests(work)
    assert not runs(sqlite_uri(work), "datasets")  # refused before anything was recorded
    for path in work.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".json", ".txt"):
            assert secret not in path.read_text(errors="replace"), path
