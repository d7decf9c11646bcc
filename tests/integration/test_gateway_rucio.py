"""The gateway's pre-submit Rucio staging against the real Rucio test server (tests/infra/rucio) and the real
SLURM: a submission naming a rucio:// dataset is answered at once, in state `staging`, with the rule the
gateway created; no SLURM job exists until the rule is OK and the replicas verified; the job then reads the
facility's copy. A rule that goes STUCK fails the submission with the rule's id, and nothing is submitted."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mltf_flow.gateway.archive import pack
from tests.helpers import MlflowServer
from tests.integration.gateway_env import Api, GatewayProcess, write_config
from tests.integration.mlflow_queries import client

if TYPE_CHECKING:
    from tests.integration.rucio_env import RucioDaemons, RucioSite
    from tests.oidc_env import OidcProvider

pytest_plugins = ["tests.oidc_env", "tests.integration.rucio_env"]
pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.slurm, pytest.mark.rucio]

REMOTE = Path(__file__).parent / "projects" / "remote"


def rucio_gateway(directory: Path, oidc: OidcProvider, mlflow: MlflowServer, site: RucioSite,
                  rse: str) -> GatewayProcess:
    config = write_config(directory, oidc.issuer, mlflow.uri, hooks=["rucio"],
                          rucio={"rse_expression": rse, "timeout": "5m", "stuck_grace": "0s", "lifetime": "1d"})
    return GatewayProcess.start(config, env=site.server.env_overrides)


@pytest.fixture
def staged_dataset(rucio_seeded: RucioSite, tmp_path: Path) -> str:
    name = f"gw_{uuid.uuid4().hex[:8]}"
    files = []
    for i in range(2):
        path = tmp_path / "upload" / f"events_{name}_{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name} {i}\n" * 100)
        files.append(path)
    rucio_seeded.upload_dataset(name, files)
    return name


def jobs_named(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-n", name, "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


@pytest.fixture
def gateway(tmp_path: Path, oidc_provider: OidcProvider, mlflow_server: MlflowServer,
            rucio_seeded: RucioSite) -> Iterator[GatewayProcess]:
    process = rucio_gateway(tmp_path / "gw", oidc_provider, mlflow_server, rucio_seeded, rucio_seeded.facility)
    yield process
    process.stop()


def alice(gateway: GatewayProcess, oidc: OidcProvider) -> Api:
    return Api(gateway.url, oidc.mint(sub="alice", preferred_username="alice"))


def submit(api: Api, tmp_path: Path, did: str) -> dict[str, Any]:
    archive = pack(REMOTE, tmp_path / "remote.tar.gz", limit_bytes=2**20).path
    status, view = api.submit({"kind": "project", "source": {"archive": api.upload(archive)},
                               "entry_point": "train", "params": {"data": did}})
    assert status == 202, view
    return dict(view)


def test_jobs_wait_for_the_rule(gateway: GatewayProcess, oidc_provider: OidcProvider, rucio_seeded: RucioSite,
                                rucio_daemons: RucioDaemons, staged_dataset: str, mlflow_server: MlflowServer,
                                tmp_path: Path) -> None:
    api = alice(gateway, oidc_provider)
    rucio_daemons.pause()
    view = submit(api, tmp_path, f"rucio://test:{staged_dataset}")
    assert view["state"] == "staging", view
    rule_id = view["details"]["rucio_rules"]["data"]
    rule = rucio_seeded.client().get_replication_rule(rule_id)
    assert rule["state"] == "REPLICATING" and rule["rse_expression"] == rucio_seeded.facility
    # While the rule replicates, the gateway polls it (its note says so) and submits nothing.
    from tests.helpers import wait_until

    wait_until(lambda: "rule REPLICATING" in api.get(view["id"])["message"], 60, "the gateway to poll the rule")
    assert api.get(view["id"])["state"] == "staging"
    assert jobs_named(f"mltf-gw-{view['id']}") == [] and api.get(view["id"])["job_ids"] == []
    rucio_daemons.resume()
    done = api.ended(view["id"])
    assert done["state"] == "finished", done
    run = client(mlflow_server.uri).get_run(done["run_id"])
    manifest = json.loads(Path(run.data.params["data"]).read_text())  # the job got the staged copy's manifest
    assert manifest["rule_id"] == rule_id
    facility = rucio_seeded.rse_dir(rucio_seeded.facility)
    assert all(Path(f["path"]).is_relative_to(facility) for f in manifest["files"]), manifest
    assert sorted(run.data.tags["data_files"].split(",")) == [f"events_{staged_dataset}_{i}.txt" for i in range(2)]
    assert rucio_seeded.client().get_replication_rule(rule_id)["state"] == "OK"


def test_a_stuck_rule_fails_the_submission(oidc_provider: OidcProvider, rucio_seeded: RucioSite,
                                           rucio_daemons: RucioDaemons, staged_dataset: str,
                                           mlflow_server: MlflowServer, tmp_path: Path) -> None:
    island = rucio_gateway(tmp_path / "island", oidc_provider, mlflow_server, rucio_seeded, rucio_seeded.island)
    try:
        api = alice(island, oidc_provider)
        view = submit(api, tmp_path, f"rucio://test:{staged_dataset}")
        rule_id = view["details"]["rucio_rules"]["data"]
        done = api.ended(view["id"])
    finally:
        island.stop()
    assert done["state"] == "failed", done
    assert f"replication rule {rule_id}" in done["message"] and "STUCK" in done["message"], done["message"]
    assert done["job_ids"] == [] and jobs_named(f"mltf-gw-{view['id']}") == []
    run = client(mlflow_server.uri).get_run(done["run_id"])
    assert run.info.status == "FAILED" and rule_id in run.data.tags["mltf.error"]
