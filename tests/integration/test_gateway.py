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
from tests.helpers import BIN, REPO, MlflowServer, git_project, wait_until
from tests.integration.gateway_env import Api, GatewayProcess, write_config
from tests.integration.mlflow_queries import client

if TYPE_CHECKING:
    from tests.oidc_env import OidcProvider

pytest_plugins = ["tests.oidc_env"]
pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.slurm]

REMOTE = Path(__file__).parent / "projects" / "remote"
CODE = re.compile(r"enter the code ([A-Z]{4}-[A-Z]{4})")


#: A site's own pre-submit hook (docs/gateway.md's example, on the gateway's PYTHONPATH): at most 2 nodes.
SITE_HOOK = """
from mltf_flow.errors import RequestRejected


class Quota:
    name = "quota"

    def prepare(self, ctx):
        if int(ctx.submission.request.get("backend_config", {}).get("nodes", 1)) > 2:
            raise RequestRejected("at most 2 nodes per submission on this site", status=422)

    def wait(self, ctx):
        return {}


def quota(settings):
    return Quota()
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, oidc_provider: OidcProvider,
            mlflow_server: MlflowServer) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("gateway")
    (directory / "site_hooks.py").write_text(SITE_HOOK)
    config = write_config(directory, oidc_provider.issuer, mlflow_server.uri, limits={"archive": "2MiB"},
                          hooks=["site_hooks:quota"], allow_file_git=True)
    process = GatewayProcess.start(config, env={"PYTHONPATH": str(directory)})
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


@pytest.fixture(scope="module")
def alice_login(gateway: GatewayProcess, oidc_provider: OidcProvider,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Alice's shell after `export $(mltf-flow login --gateway URL)` (the device flow, answered on the IdP's page)."""
    home = tmp_path_factory.mktemp("alice-home")
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), **login(gateway, oidc_provider, "alice", home)}


def assert_token_nowhere(user_token: str, gateway: GatewayProcess, mlflow_server: MlflowServer) -> None:
    """The user's token is nowhere: MLflow's store and artifacts, the gateway's state, scripts, logs, ps."""
    needle = user_token.encode()
    assert grep_tree(mlflow_server.root, needle) == []
    assert grep_tree(gateway.config.parent, needle) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert user_token not in ps


def test_device_login_and_mlflow_run_through_the_gateway(gateway: GatewayProcess, oidc_provider: OidcProvider,
                                                         mlflow_server: MlflowServer, alice_login: dict[str, str],
                                                         tmp_path: Path) -> None:
    """The user's three commands; the run trains on SLURM, carries the user, and the token is nowhere."""
    alice = Api(gateway.url, token(oidc_provider, "alice"))
    status, _ = alice.call("PUT", "/api/v1/secrets/WANDB_API_KEY", json={"value": "wandb-canary-5f1e"})
    assert status == 201
    env = alice_login
    user_token = env["MLFLOW_TRACKING_TOKEN"]
    assert env["MLFLOW_TRACKING_URI"] == f"{gateway.url}/mlflow" and env["MLFLOW_TRACKING_AUTH"] == "mltf-gateway"
    note = tmp_path / "job-credential.txt"
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
    assert_token_nowhere(user_token, gateway, mlflow_server)


def test_pipeline_submission_trains_the_example(gateway: GatewayProcess, mlflow_server: MlflowServer,
                                                alice_login: dict[str, str], jet_sample: Path,
                                                tmp_path: Path) -> None:
    """`mltf-flow submit --step train` with the login's token: the example's whole pipeline, in a SLURM driver
    job, every run alice's."""
    env = alice_login
    result = subprocess.run(
        [str(BIN / "mltf-flow"), "submit", str(REPO / "mltf_flow" / "examples" / "jet_tagging"), "--step", "train",
         "-P", f"stage.dataset={jet_sample}", "-P", "epochs=2", "--experiment", "remote-example", "--wait"],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + gateway.log_tail
    submission_id = result.stdout.strip().splitlines()[0]
    view = Api(gateway.url, env["MLFLOW_TRACKING_TOKEN"]).get(submission_id)
    assert view["state"] == "finished" and view["kind"] == "pipeline"
    runs = [client(mlflow_server.uri).get_run(run_id) for run_id in view["details"]["runs"]]
    steps = {r.data.tags.get("mltf.step"): r for r in runs if r.data.tags.get("mltf.role") == "step"}
    assert {"features", "train"} <= set(steps), [r.data.tags for r in runs]
    assert all(r.info.user_id == "alice" and r.data.tags["mltf.user"] == "alice" for r in runs)
    train = steps["train"]
    assert train.info.status == "FINISHED" and train.data.tags["mltf.complete"] == "true"
    assert "val_accuracy" in train.data.metrics
    assert_token_nowhere(env["MLFLOW_TRACKING_TOKEN"], gateway, mlflow_server)


def test_tokens_the_gateway_refuses(gateway: GatewayProcess, oidc_provider: OidcProvider) -> None:
    """Missing, expired, for another audience, signed by another key: 401 naming what is wrong."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    good = token(oidc_provider, "alice")
    kid = jwt.get_unverified_header(good)["kid"]
    forged = jwt.encode({**jwt.decode(good, options={"verify_signature": False})},
                        rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256",
                        headers={"kid": kid})
    cases = {
        None: "no bearer token",
        token(oidc_provider, "alice", exp=int(time.time()) - 120): "expired",
        token(oidc_provider, "alice", aud="another-service"): "audience 'another-service'",
        forged: "signature does not verify",
        "not-a-jwt": "not a JWT",
    }
    for bad, words in cases.items():
        for path in ("/api/v1/submissions", "/mlflow/api/2.0/mlflow/experiments/search?max_results=1"):
            status, body = Api(gateway.url, bad).call("GET", path)
            assert status == 401, (path, body)
            assert words in json.dumps(body), (path, body)
    assert Api(gateway.url, good).call("GET", "/api/v1/submissions")[0] == 200


def test_users_see_and_cancel_only_their_own(gateway: GatewayProcess, oidc_provider: OidcProvider,
                                             packed: Path, tmp_path: Path) -> None:
    alice = Api(gateway.url, token(oidc_provider, "alice"))
    bob = Api(gateway.url, token(oidc_provider, "bob"))
    carol = Api(gateway.url, token(oidc_provider, "carol"))
    digest = alice.upload(packed)
    gate = tmp_path / "never-opened"  # the job waits for it: still there when cancelled
    status, view = alice.submit(project_request(digest, params={"gate": str(gate)}))
    assert status == 202, view
    sid = view["id"]
    assert bob.call("GET", f"/api/v1/submissions/{sid}")[0] == 404
    assert bob.call("POST", f"/api/v1/submissions/{sid}/cancel")[0] == 404
    assert bob.call("GET", f"/api/v1/submissions/{sid}/logs")[0] == 404
    assert sid not in {s["id"] for s in bob.call("GET", "/api/v1/submissions")[1]}
    assert bob.call("GET", "/api/v1/submissions?all=true")[0] == 403
    assert sid in {s["id"] for s in carol.call("GET", "/api/v1/submissions?all=true")[1]}
    assert alice.get(sid)["state"] not in ("failed", "cancelled")
    status, cancelled = alice.call("POST", f"/api/v1/submissions/{sid}/cancel")
    assert status == 200, cancelled
    ended = alice.ended(sid)
    assert ended["state"] == "cancelled", ended
    assert not gate.exists()


def test_hostile_archives_are_refused(gateway: GatewayProcess, oidc_provider: OidcProvider, tmp_path: Path) -> None:
    alice = Api(gateway.url, token(oidc_provider, "alice"))
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("MLproject", (REMOTE / "MLproject").read_bytes()), ("../escaped.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    digest = alice.upload(archive)
    status, body = alice.submit(project_request(digest))
    assert status in (400, 422) and "../escaped.txt" in body["error"], body
    state = gateway.config.parent / "state"
    assert not (state / "escaped.txt").exists() and not list(state.rglob("escaped.txt"))
    # Larger than the gateway's archive limit (2 MiB here): 413 while it streams.
    status, body = alice.call("PUT", "/api/v1/archives", content=b"\0" * (3 * 2**20))
    assert status == 413, body
    # A submission's JSON larger than the request limit (1 MiB by default): 413 before it is parsed.
    status, body = alice.call("POST", "/api/v1/submissions", content=b"{" + b" " * (2 * 2**20) + b"}",
                              headers={"Content-Type": "application/json"})
    assert status == 413 and "limit" in body["error"], body


def test_job_credentials_only_reach_mlflow_and_secrets_stay_with_their_user(
        gateway: GatewayProcess, oidc_provider: OidcProvider, mlflow_server: MlflowServer, packed: Path,
        tmp_path: Path) -> None:
    alice = Api(gateway.url, token(oidc_provider, "alice"))
    assert alice.call("PUT", "/api/v1/secrets/WANDB_API_KEY", json={"value": "wandb-canary-5f1e"})[0] == 201
    bob = Api(gateway.url, token(oidc_provider, "bob"))
    status, listing = bob.call("GET", "/api/v1/secrets")
    assert status == 200 and "WANDB_API_KEY" not in {s["name"] for s in listing}
    assert bob.call("PUT", "/api/v1/secrets/SLURM_JOB_ID", json={"value": "x"})[0] in (400, 422)
    note = tmp_path / "bob-credential.txt"
    status, view = bob.submit(project_request(bob.upload(packed), params={"note_to": str(note)}))
    assert status == 202, view
    done = bob.ended(view["id"])
    assert done["state"] == "finished", done
    run = client(mlflow_server.uri).get_run(done["run_id"])
    assert run.data.tags["secret_sha256"] == "absent"  # alice's WANDB_API_KEY is hers only
    credential = note.read_text()
    status, body = Api(gateway.url, credential).call("GET", "/api/v1/submissions")
    assert status in (401, 403), body
    status, log = bob.call("GET", f"/api/v1/submissions/{done['id']}/logs")
    assert status == 200 and "done" in log, log  # the job's log, as `mltf-flow submissions logs` shows it


def test_health_and_metrics(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json()["status"] == "ok"
    text = httpx.get(f"{gateway.url}/metrics").text
    assert 'mltf_gateway_submissions{state="finished"}' in text
    assert "mltf_gateway_auth_failures_total" in text


def test_users_change_only_their_own_runs(gateway: GatewayProcess, oidc_provider: OidcProvider,
                                          mlflow_server: MlflowServer) -> None:
    """Reading is open; a run's tags, metrics, status and existence are its owner's (or an admin's)."""
    alice, bob, carol = (Api(gateway.url, token(oidc_provider, u)) for u in ("alice", "bob", "carol"))
    api = "/mlflow/api/2.0/mlflow"
    status, created = alice.call("POST", f"{api}/runs/create", json={"experiment_id": "0"})
    assert status == 200, created
    run_id = created["run"]["info"]["run_id"]
    tag = {"run_id": run_id, "key": "note", "value": "x"}
    assert bob.call("GET", f"{api}/runs/get", params={"run_id": run_id})[0] == 200
    for path, body in (("runs/set-tag", tag), ("runs/delete", {"run_id": run_id}),
                       ("runs/log-metric", {"run_id": run_id, "key": "m", "value": 1, "timestamp": 0})):
        status, answer = bob.call("POST", f"{api}/{path}", json=body)
        assert status == 403 and "alice's" in answer["message"], (path, answer)
    status, answer = bob.call("PUT", f"/mlflow/api/2.0/mlflow-artifacts/artifacts/0/{run_id}/artifacts/x.txt",
                              content=b"not yours")
    assert status == 403, answer
    assert bob.call("POST", f"{api}/experiments/delete", json={"experiment_id": "0"})[0] == 403
    assert alice.call("POST", f"{api}/runs/set-tag", json=tag)[0] == 200
    assert carol.call("POST", f"{api}/runs/set-tag", json={**tag, "value": "admin"})[0] == 200
    run = client(mlflow_server.uri).get_run(run_id)
    assert run.info.lifecycle_stage == "active" and run.data.tags["note"] == "admin" and not run.data.metrics


def test_a_git_source_and_a_site_hook(gateway: GatewayProcess, oidc_provider: OidcProvider,
                                      mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """A project the gateway clones at a commit; the site's own hook refuses before anything is submitted."""
    repo = git_project(REMOTE, tmp_path / "repo")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    alice = Api(gateway.url, token(oidc_provider, "alice"))
    source = {"git": f"file://{repo}", "commit": commit}
    status, refused = alice.submit({"kind": "project", "source": source, "entry_point": "train",
                                    "backend_config": {"nodes": 3}})
    assert status == 422 and "at most 2 nodes per submission on this site" in refused["error"], refused
    assert refused["submission"]["job_ids"] == []
    status, view = alice.submit({"kind": "project", "source": source, "entry_point": "train",
                                 "params": {"lr": 0.25}})
    assert status == 202, view
    done = alice.ended(view["id"])
    assert done["state"] == "finished", done
    assert client(mlflow_server.uri).get_run(done["run_id"]).data.params["lr"] == "0.25"
    status, bad = alice.submit({"kind": "project", "source": {"git": f"file://{repo}", "commit": "not-a-sha"},
                                "entry_point": "train"})
    assert status == 422 and "commit" in bad["error"], bad
