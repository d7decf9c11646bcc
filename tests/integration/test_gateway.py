"""The gateway end to end, every part real and on 127.0.0.1: `mltf-flow gateway serve` (a process), the OIDC
provider of tests/oidc_env.py (device flow, tokens signed and checked by signature), the session's
`mlflow server` behind the gateway's proxy, and the single-node SLURM of tests/infra/slurm.sh.

What it shows (issue 20): `mltf-flow login` completes the device flow; a project submitted with that token by
the real `mlflow run --backend mltf-gateway` trains on SLURM and its run carries the user; a pipeline
submitted with `mltf-flow submit` trains the example; bad tokens get 401 with a clear message; users see
and cancel only their own; hostile archives are refused; the user's token appears nowhere; the job's
credential stops working when its job ended; a user's secret reaches their jobs and no one else's."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest

from mltf_flow.gateway.archive import pack
from tests.helpers import BIN, REPO, MlflowServer, wait_until
from tests.integration.gateway_env import Api, GatewayProcess, write_config
from tests.integration.mlflow_queries import client

if TYPE_CHECKING:
    from tests.oidc_env import OidcProvider

pytest_plugins = ["tests.oidc_env"]
pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.slurm]

REMOTE = Path(__file__).parent / "projects" / "remote"
CODE = re.compile(r"enter the code ([A-Z]{4}-[A-Z]{4})")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, oidc_provider: OidcProvider,
            mlflow_server: MlflowServer) -> Iterator[GatewayProcess]:
    config = write_config(tmp_path_factory.mktemp("gateway"), oidc_provider.issuer, mlflow_server.uri,
                          limits={"archive": "2MiB", "requests_per_minute": 600, "burst": 200})
    process = GatewayProcess.start(config)
    yield process
    process.stop()


def token(oidc: OidcProvider, user: str, **claims: Any) -> str:
    groups = ["mltf-admins"] if user == "carol" else ["physicists"]
    return oidc.mint(sub=user, preferred_username=user, groups=groups, **claims)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack(REMOTE, tmp_path_factory.mktemp("packed") / "remote.tar.gz", limit_bytes=2**20).path


def project_request(digest: str, **more: Any) -> dict[str, Any]:
    return {"kind": "project", "source": {"archive": digest}, "entry_point": "train", **more}


def login(gateway: GatewayProcess, oidc: OidcProvider, user: str, home: Path) -> dict[str, str]:
    """`export $(mltf-flow login --gateway URL)` with the user answering on the IdP's page: the exports."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    proc = subprocess.Popen([str(BIN / "mltf-flow"), "login", "--gateway", gateway.url], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shown: list[str] = []
    reader = threading.Thread(target=lambda: shown.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    match = wait_until(lambda: CODE.search("".join(shown)), 60, "the login's user code")
    assert isinstance(match, re.Match)
    oidc.approve(match.group(1), user)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(shown)
    return dict(line.split("=", 1) for line in out.splitlines())


def grep_tree(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def test_device_login_and_mlflow_run_through_the_gateway(gateway: GatewayProcess, oidc_provider: OidcProvider,
                                                         mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """The user's three commands; the run trains on SLURM, carries the user, and the token is nowhere."""
    alice = Api(gateway.url, token(oidc_provider, "alice"))
    status, _ = alice.call("PUT", "/api/v1/secrets/WANDB_API_KEY", json={"value": "wandb-canary-5f1e"})
    assert status == 201
    exports = login(gateway, oidc_provider, "alice", tmp_path / "home")
    user_token = exports["MLFLOW_TRACKING_TOKEN"]
    assert exports["MLFLOW_TRACKING_URI"] == f"{gateway.url}/mlflow"
    note = tmp_path / "job-credential.txt"
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), **exports}
    result = subprocess.run(
        [str(BIN / "mlflow"), "run", str(REMOTE), "-e", "train", "--backend", "mltf-gateway", "--env-manager", "local",
         "-P", "lr=0.5", "-P", f"note_to={note}", "--experiment-name", "remote-alice"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    submission = re.search(r"submission ([0-9a-f]{16})", output)
    assert submission, output
    view = alice.ended(submission.group(1))
    assert view["state"] == "finished", view
    run = client(mlflow_server.uri).get_run(view["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mltf.complete"] == "true"
    assert run.info.user_id == "alice"
    assert run.data.tags["mltf.user"] == "alice" and run.data.tags["mlflow.user"] == "alice"
    assert run.data.tags["mltf.gateway.submission"] == view["id"]
    assert run.data.tags["secret_sha256"] == hashlib.sha256(b"wandb-canary-5f1e").hexdigest()
    script = Path(run.data.tags["mltf.slurm.job_dir"]) / "job.sh"
    assert f"--comment=mltf-gateway:user=alice:submission={view['id']}" in script.read_text()
    # The job's credential worked during the job (the run is complete) and does no longer.
    job_credential = note.read_text()
    answer = httpx.get(f"{gateway.url}/mlflow/api/2.0/mlflow/runs/get", params={"run_id": view["run_id"]},
                       headers={"Authorization": f"Bearer {job_credential}"})
    assert answer.status_code == 401 and "revoked" in answer.text
    # The user's token is nowhere: MLflow's store and artifacts, the gateway's state, scripts, logs, ps.
    needle = user_token.encode()
    assert grep_tree(mlflow_server.root, needle) == []
    assert grep_tree(gateway.config.parent, needle) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert user_token not in ps
