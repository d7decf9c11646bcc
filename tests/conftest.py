"""Shared fixtures: isolated work dirs, a small generated jet sample, a real `mlflow server`, a real SMTP server
and webhook receiver (tests/receivers.py), and a writer of a profiles file listed in MLTF_FLOW_PROFILE_FILES.
Helpers (running `luigi` and `mltf-flow` the way users do, polling, ...) are in tests/helpers.py; the test
environments (-E slurm|rucio|gpu and their markers) in tests/environments.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    EXAMPLE,
    REPO,
    REPO_PROFILES,
    MlflowServer,
    WriteProfiles,
    seed_store,
    served_store,
)
from tests.receivers import SmtpServer, WebhookReceiver

pytest_plugins = ["tests.environments", "tests.parallel"]


@pytest.fixture(scope="session")
def env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built environments, shared by the session's tests (each is built once, as on a real machine)."""
    return tmp_path_factory.mktemp("envs")


@pytest.fixture(scope="session", autouse=True)
def _session_env(env_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Set before any fixture of any scope (module-scoped pipeline runs too): steps run in this venv
    (``local``) unless a test asks for a built environment (the example declares torch & co.), built
    environments go to the session's env root, never to ~/.mlflow/envs, and remembered configuration
    (mltf_flow.config.memo) to the session's cache, never to ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("MLTF_FLOW_ENV_MANAGER", "local")
        patch.setenv("MLTF_FLOW_ENV_ROOT", str(env_root))
        # The repository's profiles (slurm-ci, rucio-demo, ...), named explicitly as the Makefile does.
        patch.setenv("MLTF_FLOW_PROFILE_FILES", str(REPO_PROFILES))
        yield


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store with MLflow's schema migrations applied, made once per session. A test's
    work dir starts with a copy of it: migrating a new store costs 2-6 s of this machine's time per test,
    a copy milliseconds. (Tests of a store's creation use a work dir of their own.)"""
    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    subprocess.run(
        [sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
         "MlflowClient(sys.argv[1]).search_experiments(max_results=1)", f"sqlite:///{path}"],
        check=True, capture_output=True,
    )
    return path


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """No test reads the developer's settings or writes outside its tmp dir. Integration tests start with
    an empty migrated store in their work dir (see store_template)."""
    monkeypatch.setenv("MLTF_FLOW_WORK_DIR", str(tmp_path / "work"))
    if "unit" not in request.node.path.relative_to(REPO).parts:
        seed_store(tmp_path / "work", request.getfixturevalue("store_template"))
    monkeypatch.delenv("MLTF_FLOW_CONFIG", raising=False)
    monkeypatch.delenv("MLTF_FLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLTF_INVOCATION_ID", raising=False)
    monkeypatch.delenv("MLTF_MAIN_PID", raising=False)
    monkeypatch.setenv("LUIGI_CONFIG_PATH", str(REPO / "configs" / "luigi.cfg"))


@pytest.fixture(scope="session")
def jet_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic sample (2 files x 800 jets) made by the example's own generator."""
    out = tmp_path_factory.mktemp("jets") / "sample"
    subprocess.run(
        [sys.executable, str(EXAMPLE / "generate.py"), "--out-dir", str(out), "--n-files", "2",
         "--events-per-file", "800", "--seed", "5"],
        check=True, capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` (sqlite backend, proxied artifacts) on 127.0.0.1 and a free port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with served_store(f"sqlite:///{root}/server.db", root) as uri:
        yield MlflowServer(uri, root)


@pytest.fixture(scope="session")
def _smtp_session() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_server(_smtp_session: SmtpServer) -> SmtpServer:
    """The session's real SMTP server (aiosmtpd on 127.0.0.1), emptied for this test."""
    _smtp_session.clear()
    return _smtp_session


@pytest.fixture(scope="session")
def _webhook_session() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def webhook_receiver(_webhook_session: WebhookReceiver) -> WebhookReceiver:
    """The session's HTTP receiver of webhook POSTs (127.0.0.1), emptied for this test."""
    _webhook_session.clear()
    return _webhook_session


@pytest.fixture
def write_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WriteProfiles:
    """Write ``tmp_path``/profiles.yaml (a dict is dumped as YAML; a str is written verbatim) and list it last in
    MLTF_FLOW_PROFILE_FILES (after the files already listed there). Use it with
    :func:`tests.helpers.isolate_profiles`."""

    def write(data: object) -> Path:
        path = tmp_path / "profiles.yaml"
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        listed = [p for p in os.environ.get("MLTF_FLOW_PROFILE_FILES", "").split(os.pathsep) if p]
        if str(path) not in listed:
            monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", os.pathsep.join([*listed, str(path)]))
        return path

    return write
