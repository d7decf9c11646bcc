"""The gateway killed (SIGKILL) mid-submission and started again on the same database: every accepted
submission goes on to its end, none is lost and none is submitted twice. The kill points are named phases
(mltf_flow.phases): ``gateway.accepted`` (the row is written, the request not answered: the client retries
with its Idempotency-Key) and ``gateway.job_submitted`` (sbatch answered, the database not yet told: the
restarted gateway must find the job, not submit another). Also the per-user rate limit (429, Retry-After)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from mltf_flow.gateway.archive import pack
from mltf_flow.phases import GATEWAY_ACCEPTED, GATEWAY_JOB_SUBMITTED, PAUSE_AT_ENV, PAUSE_DIR_ENV, marker
from tests.helpers import MlflowServer, wait_until
from tests.integration.gateway_env import Api, GatewayProcess, write_config
from tests.integration.mlflow_queries import client

if TYPE_CHECKING:
    from tests.oidc_env import OidcProvider

pytest_plugins = ["tests.oidc_env"]
pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.slurm]

REMOTE = Path(__file__).parent / "projects" / "remote"


def killed_at(config: Path, phase: str, pause_dir: Path) -> GatewayProcess:
    return GatewayProcess.start(config, env={PAUSE_AT_ENV: phase, PAUSE_DIR_ENV: str(pause_dir)})


def test_killed_after_accepting_the_client_retry_gets_the_same_submission(
        tmp_path: Path, oidc_provider: OidcProvider, mlflow_server: MlflowServer) -> None:
    config = write_config(tmp_path / "gw", oidc_provider.issuer, mlflow_server.uri)
    pause = tmp_path / "pause"
    gateway = killed_at(config, GATEWAY_ACCEPTED, pause)
    api = Api(gateway.url, oidc_provider.mint(sub="alice", preferred_username="alice"))
    request = {"kind": "project", "entry_point": "train", "params": {"lr": 0.3},
               "source": {"archive": api.upload(pack(REMOTE, tmp_path / "p.tar.gz", limit_bytes=2**20).path)}}
    answers: list[Any] = []

    def post() -> None:
        try:
            answers.append(api.submit(request, key="retry-me-1"))
        except httpx.HTTPError as exc:  # the gateway died under the request
            answers.append(exc)

    poster = threading.Thread(target=post)
    poster.start()
    wait_until(lambda: marker(GATEWAY_ACCEPTED, pause).exists(), 60, "the gateway to accept the submission")
    gateway.stop(signal.SIGKILL)
    poster.join(timeout=60)
    assert isinstance(answers[0], httpx.HTTPError), answers  # no answer: the client does not know the id

    restarted = GatewayProcess.start(config, log_name="gateway-2.log")
    try:
        status, view = api.submit(request, key="retry-me-1")
        assert status == 200, view  # the same submission, not a second one
        again_status, again = api.submit(request, key="retry-me-1")
        assert again_status == 200 and again["id"] == view["id"]
        done = api.ended(view["id"])
        assert done["state"] == "finished", (done, restarted.log_tail)
        status, mine = api.call("GET", "/api/v1/submissions")
        assert [s["id"] for s in mine] == [view["id"]]
        run = client(mlflow_server.uri).get_run(done["run_id"])
        assert run.data.tags["mltf.complete"] == "true" and run.data.tags["mltf.slurm_job_ids"] == done["job_ids"][0]
    finally:
        restarted.stop()


def test_killed_after_sbatch_the_restarted_gateway_finds_the_job(
        tmp_path: Path, oidc_provider: OidcProvider, mlflow_server: MlflowServer) -> None:
    """A pipeline (its driver job found again by name or by the marker it wrote) and a project (by its run's
    tags), both submitted once."""
    config = write_config(tmp_path / "gw", oidc_provider.issuer, mlflow_server.uri)
    pause = tmp_path / "pause"
    gateway = killed_at(config, GATEWAY_JOB_SUBMITTED, pause)
    api = Api(gateway.url, oidc_provider.mint(sub="bob", preferred_username="bob"))
    digest = api.upload(pack(REMOTE, tmp_path / "p.tar.gz", limit_bytes=2**20).path)
    status, pipeline = api.submit({"kind": "pipeline", "target": "train", "source": {"archive": digest},
                                   "params": {"prepare.n": 4}})
    assert status == 202, pipeline
    wait_until(lambda: marker(GATEWAY_JOB_SUBMITTED, pause).exists(), 120, "the gateway to submit the job")
    gateway.stop(signal.SIGKILL)

    restarted = GatewayProcess.start(config, log_name="gateway-2.log")
    try:
        status, project = api.submit({"kind": "project", "entry_point": "train", "source": {"archive": digest}})
        assert status == 202, project
        done = api.ended(pipeline["id"], timeout=600)
        assert done["state"] == "finished", (done, restarted.log_tail)
        job_dir = tmp_path / "gw" / "state" / "submissions" / pipeline["id"] / "job"
        started = sorted(p.name for p in job_dir.glob("started.*"))
        assert started == [f"started.{done['job_ids'][0]}"], started  # one driver job, the first one
        runs = [client(mlflow_server.uri).get_run(r) for r in done["details"]["runs"]]
        trains = [r for r in runs if r.data.tags.get("mltf.step") == "train"]
        assert len(trains) == 1 and trains[0].data.tags["data_files"] == "table.txt"
        assert api.ended(project["id"])["state"] == "finished"
    finally:
        restarted.stop()


def test_rate_limit_per_user(tmp_path: Path, oidc_provider: OidcProvider, mlflow_server: MlflowServer) -> None:
    config = write_config(tmp_path / "gw", oidc_provider.issuer, mlflow_server.uri,
                          limits={"requests_per_minute": 6, "burst": 3})
    gateway = GatewayProcess.start(config)
    try:
        dave = Api(gateway.url, oidc_provider.mint(sub="dave", preferred_username="dave"))
        erin = Api(gateway.url, oidc_provider.mint(sub="erin", preferred_username="erin"))
        statuses = [dave.call("GET", "/api/v1/submissions")[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        answer = httpx.get(f"{gateway.url}/api/v1/submissions", headers={"Authorization": f"Bearer {dave.token}"})
        assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
        assert "too many requests from dave" in answer.json()["error"]
        assert erin.call("GET", "/api/v1/submissions")[0] == 200  # one user's burst never slows another
    finally:
        gateway.stop()
