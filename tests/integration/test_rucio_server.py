"""The Rucio test infrastructure itself (tests/integration/rucio_env.py, tests/infra/rucio/), against the real
server through the REST client: auth, uploads, rules that really copy files, STUCK rules, pausing the daemons,
late attaches."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pytest

if TYPE_CHECKING:
    from rucio.client import Client

    from tests.integration.rucio_env import RucioDaemons, RucioServer, RucioSite

pytest_plugins = ["tests.integration.rucio_env"]
pytestmark = [pytest.mark.slow, pytest.mark.rucio]


def adler32(path: Path) -> str:
    value = 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def make_files(directory: Path, n: int, tag: str) -> list[Path]:
    """n small random files with names unique in the session (file DIDs are global in their scope)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{tag}_{uuid.uuid4().hex[:8]}"
    paths = []
    for i in range(n):
        path = directory / f"{stem}_{i}.bin"
        path.write_bytes(os.urandom(1000 * (i + 1)))
        paths.append(path)
    return paths


def rule_state(client: Client, rule_id: str) -> str:
    return str(client.get_replication_rule(rule_id)["state"])


def replicas_on(client: Client, site: RucioSite, rse: str, scope: str, name: str) -> dict[str, dict[str, Any]]:
    """{file name: list_replicas entry + 'path'} for the AVAILABLE replicas of a dataset's files on `rse`."""
    out = {}
    for rep in client.list_replicas([{"scope": scope, "name": name}], rse_expression=rse, schemes=["file"]):
        pfns = rep["rses"].get(rse) or []
        if pfns:
            out[rep["name"]] = {**rep, "path": Path(urlparse(pfns[0]).path)}
    return out


def test_whoami_in_process_and_subprocess(rucio_server: RucioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert rucio_server.client().whoami()["account"] == "root"
    # A client process configured only by `env` (RUCIO_CONFIG=client.cfg, private TMPDIR): an outer
    # RUCIO_ACCOUNT does not leak into it.
    monkeypatch.setenv("RUCIO_ACCOUNT", "nobody")
    code = "from rucio.client import Client; print(Client().whoami()['account'])"
    result = subprocess.run([sys.executable, "-c", code], env=rucio_server.env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "root", result.stdout + result.stderr
    assert rucio_server.token_dir.is_dir()
    # In-process code that calls Client() without arguments: only inside activated().
    with rucio_server.activated():
        from rucio.client import Client

        assert Client().whoami()["account"] == "root"
    assert os.environ.get("RUCIO_CONFIG") != str(rucio_server.client_cfg)
    assert os.environ["RUCIO_ACCOUNT"] == "nobody"


def test_client_env_fixture(rucio_client_env: RucioServer) -> None:
    from rucio.client import Client

    assert os.environ["RUCIO_CONFIG"] == str(rucio_client_env.client_cfg)
    assert Client().whoami()["account"] == "root"


def test_rule_to_facility_copies_files(rucio_seeded: RucioSite, rucio_daemons: RucioDaemons,
                                       tmp_path: Path) -> None:
    site, client = rucio_seeded, rucio_seeded.client()
    name = f"ds3_{uuid.uuid4().hex[:8]}"
    files = site.upload_dataset(name, make_files(tmp_path, 3, "copy"))
    assert len(files) == 3 and client.get_did(site.scope, name)["open"] is False
    rule_id = client.add_replication_rule([{"scope": site.scope, "name": name}], 1, site.facility,
                                          grouping="DATASET")[0]
    rucio_daemons.wait_for(lambda: rule_state(client, rule_id) == "OK", rounds=5, what=f"rule {rule_id} OK")
    rule = client.get_replication_rule(rule_id)
    assert (rule["locks_ok_cnt"], rule["locks_replicating_cnt"], rule["locks_stuck_cnt"]) == (3, 0, 0)
    on_facility = replicas_on(client, site, site.facility, site.scope, name)
    catalogue = {f["name"]: f for f in files}
    assert set(on_facility) == set(catalogue)
    for fname, rep in on_facility.items():
        path = rep["path"]
        assert path.is_relative_to(site.rse_dir(site.facility)), path
        assert path.stat().st_size == catalogue[fname]["bytes"]
        assert adler32(path) == catalogue[fname]["adler32"] == rep["adler32"]


def test_rule_without_source_goes_stuck(rucio_seeded: RucioSite, rucio_daemons: RucioDaemons,
                                        tmp_path: Path) -> None:
    site, client = rucio_seeded, rucio_seeded.client()
    name = f"island_{uuid.uuid4().hex[:8]}"
    site.upload_dataset(name, make_files(tmp_path, 1, "island"))
    rule_id = client.add_replication_rule([{"scope": site.scope, "name": name}], 1, site.island,
                                          grouping="DATASET")[0]
    rucio_daemons.wait_for(lambda: rule_state(client, rule_id) == "STUCK", rounds=5, what=f"rule {rule_id} STUCK")
    rule = client.get_replication_rule(rule_id)
    assert "NO_SOURCES" in (rule["error"] or ""), rule["error"]
    assert rule["locks_stuck_cnt"] == 1
    assert not replicas_on(client, site, site.island, site.scope, name)
    assert not any(p.is_file() for p in site.rse_dir(site.island).rglob("*"))


def test_paused_daemons_hold_rules_until_resumed(rucio_seeded: RucioSite, rucio_daemons: RucioDaemons,
                                                 tmp_path: Path) -> None:
    site, client = rucio_seeded, rucio_seeded.client()
    name = f"paused_{uuid.uuid4().hex[:8]}"
    site.upload_dataset(name, make_files(tmp_path, 2, "paused"))
    rucio_daemons.pause()
    rounds = rucio_daemons.rounds()
    rule_id = client.add_replication_rule([{"scope": site.scope, "name": name}], 1, site.facility,
                                          grouping="DATASET")[0]
    assert rule_state(client, rule_id) == "REPLICATING"
    assert not replicas_on(client, site, site.facility, site.scope, name)
    assert rucio_daemons.rounds() == rounds  # no round ran while paused
    rucio_daemons.resume()
    rucio_daemons.wait_rounds(1)
    assert rule_state(client, rule_id) == "OK"  # one full round takes a new rule to OK
    assert len(replicas_on(client, site, site.facility, site.scope, name)) == 2


def test_attached_file_follows_existing_rule(rucio_seeded: RucioSite, rucio_daemons: RucioDaemons,
                                             tmp_path: Path) -> None:
    site, client = rucio_seeded, rucio_seeded.client()
    name = f"grow_{uuid.uuid4().hex[:8]}"
    first, late = make_files(tmp_path, 2, "grow"), make_files(tmp_path / "late", 1, "late")[0]
    site.upload_dataset(name, first)
    rule_id = client.add_replication_rule([{"scope": site.scope, "name": name}], 1, site.facility,
                                          grouping="DATASET")[0]
    rucio_daemons.wait_for(lambda: rule_state(client, rule_id) == "OK", rounds=5, what=f"rule {rule_id} OK")

    added = site.attach_file(name, late)
    assert added["name"] == late.name and client.get_did(site.scope, name)["open"] is False
    assert len(list(client.list_files(site.scope, name))) == 3
    # One full round: the judge re-evaluator adds the lock and transfer, the conveyor copies it.
    rucio_daemons.wait_rounds(1)
    on_facility = replicas_on(client, site, site.facility, site.scope, name)
    assert late.name in on_facility, sorted(on_facility)
    assert adler32(on_facility[late.name]["path"]) == added["adler32"]
    rule = client.get_replication_rule(rule_id)
    assert (rule["state"], rule["locks_ok_cnt"]) == ("OK", 3)
