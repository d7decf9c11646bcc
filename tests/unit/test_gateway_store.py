"""The gateway's database (a real sqlite file), its job credentials (real HS256 JWTs), its configuration file and
the pipeline driver's script: what must hold without a server."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
import yaml

from mltf_flow.errors import AuthError, ConfigError, NotFound, RequestRejected
from mltf_flow.gateway.job_credentials import JOB_AUDIENCE, JobCredentials
from mltf_flow.gateway.pipeline_jobs import render
from mltf_flow.gateway.settings import gateway_settings, load_gateway_settings
from mltf_flow.gateway.store import Store

ISSUER = "https://gw.example.org"
MINIMAL = {"public_url": ISSUER, "mlflow_upstream": "http://mlflow:5000", "oidc": {"issuer": "https://sso.example.org"}}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'gw.db'}")


def test_a_submission_is_recorded_once_per_idempotency_key(store: Store) -> None:
    first, new = store.add_submission("alice", "project", {"entry_point": "train"}, {"archive": "x"}, "k1")
    again, new_again = store.add_submission("alice", "project", {"entry_point": "train"}, {"archive": "x"}, "k1")
    assert new and not new_again and again.id == first.id
    other, new_other = store.add_submission("bob", "project", {}, {}, "k1")  # keys are per user
    assert new_other and other.id != first.id
    assert [s.id for s in store.submissions("alice")] == [first.id]
    assert {s.id for s in store.open_submissions()} == {first.id, other.id}


def test_an_ended_submission_stays_ended(store: Store) -> None:
    sub, _ = store.add_submission("alice", "pipeline", {"target": "train"}, {}, None)
    store.update(sub.id, state="cancelled", message="cancelled while staging", details={"a": 1})
    after = store.update(sub.id, state="running", details={"b": 2})
    assert after.state == "cancelled" and after.details == {"a": 1}
    assert store.counts() == {"cancelled": 1}
    with pytest.raises(NotFound):
        store.get("nope")


def test_job_credentials_work_until_revoked_and_only_with_the_gateway_key(store: Store) -> None:
    sub, _ = store.add_submission("alice", "project", {}, {}, None)
    creds = JobCredentials(b"k" * 32, ISSUER, store)
    token = creds.mint(sub.id, "alice", 3600)
    who = creds.check(token)
    assert (who.user, who.submission, who.is_job) == ("alice", sub.id, True)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == JOB_AUDIENCE and claims["exp"] <= time.time() + 3601
    forged = jwt.encode({**claims, "sub": "bob"}, b"x" * 32, algorithm="HS256")
    with pytest.raises(AuthError, match="not valid"):
        creds.check(forged)
    moved = jwt.encode({**claims, "submission": "another"}, b"k" * 32, algorithm="HS256")
    with pytest.raises(AuthError, match="revoked"):
        creds.check(moved)  # a real jti, but of another submission
    assert store.revoke_credentials(sub.id) == 1
    with pytest.raises(AuthError, match=f"submission {sub.id} has ended"):
        creds.check(token)


def test_expired_job_credential(store: Store) -> None:
    sub, _ = store.add_submission("alice", "project", {}, {}, None)
    creds = JobCredentials(b"k" * 32, ISSUER, store)
    claims = jwt.decode(creds.mint(sub.id, "alice", 3600), options={"verify_signature": False})
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, b"k" * 32, algorithm="HS256")
    with pytest.raises(AuthError, match="expired"):
        creds.check(expired)


def test_configuration_errors_name_the_file_and_key(tmp_path: Path) -> None:
    assert gateway_settings(MINIMAL, "gw.yaml").database_url.startswith("sqlite:////var/lib/mltf-gateway")
    with pytest.raises(ConfigError, match=r"gateway.yaml.*does not exist"):
        load_gateway_settings(tmp_path / "gateway.yaml")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "oidc": {"isuer": "https://sso"}}))
    with pytest.raises(ConfigError, match=r"isuer.*issuer") as caught:
        load_gateway_settings(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match=r"key 'backend': unknown key.*run_id"):
        gateway_settings({**MINIMAL, "backend": {"run_id": "x"}}, "gw.yaml")
    with pytest.raises(ConfigError, match="http"):
        gateway_settings({**MINIMAL, "public_url": "gw.example.org"}, "gw.yaml")


def test_pipeline_driver_script_holds_no_secret_and_refuses_secret_params(store: Store, tmp_path: Path) -> None:
    settings = gateway_settings({**MINIMAL, "state_dir": str(tmp_path)}, "gw.yaml")
    sub, _ = store.add_submission("alice", "pipeline", {"target": "train", "params": {"epochs": 3}}, {}, None)
    script = render(sub, settings, tmp_path / "project")
    assert f"#SBATCH --job-name=mltf-gw-{sub.id}" in script
    assert f"--comment=mltf-gateway:user=alice:submission={sub.id}" in script
    assert "--step train -P epochs=3" in script and "TOKEN" not in script
    leaky, _ = store.add_submission("alice", "pipeline", {"target": "train", "params": {"api_token": "t0k"}}, {}, None)
    with pytest.raises(RequestRejected, match=r"looks like a secret.*mltf-flow secrets add"):
        render(leaky, settings, tmp_path / "project")
    greedy, _ = store.add_submission("alice", "pipeline", {"target": "train", "job": {"python": "/bin/sh"}}, {}, None)
    with pytest.raises(RequestRejected, match="python"):
        render(greedy, settings, tmp_path / "project")


def test_backend_config_typos_are_told_apart_from_the_facility_keys() -> None:
    from mltf_flow.gateway.project_jobs import check_backend_config

    assert check_backend_config({"partition": "gpu", "ENV_MANAGER": "local"}) == {"partition": "gpu",
                                                                                  "ENV_MANAGER": "local"}
    with pytest.raises(RequestRejected, match=r"unknown key\(s\) partion.*Did you mean 'partition'"):
        check_backend_config({"partion": "gpu"})
    with pytest.raises(RequestRejected, match=r"job_dir are set by the facility"):
        check_backend_config({"job_dir": "/tmp/elsewhere"})
