"""Shared fixtures: isolated work dirs, a small generated jet sample, a real `mlflow server`, and
helpers that run pipelines the way users do (the `luigi` and `mltf-flow` commands, in subprocesses)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "pipelines" / "jet_tagging"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def env_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built environments, shared by the session's tests (each is built once, as on a real machine)."""
    return tmp_path_factory.mktemp("envs")


@pytest.fixture(scope="session", autouse=True)
def _session_env(env_root: Path) -> Iterator[None]:
    """Set before any fixture of any scope (module-scoped pipeline runs too): steps run in this venv
    (``local``) unless a test asks for a built environment (the example declares torch & co.), and built
    environments go to the session's env root, never to ~/.mlflow/envs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLTF_FLOW_ENV_MANAGER", "local")
        patch.setenv("MLTF_FLOW_ENV_ROOT", str(env_root))
        yield


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's settings or writes outside its tmp dir."""
    monkeypatch.setenv("MLTF_FLOW_WORK_DIR", str(tmp_path / "work"))
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


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cmd(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 600) -> Result:
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"
    # Own session: on a timeout the whole tree (Luigi's forked task processes too) is killed, so a hung
    # test leaves nothing behind.
    proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{' '.join(args)} did not finish in {timeout:.0f} s:\n{stdout[-3000:]}{stderr[-3000:]}"
        ) from None
    return Result(proc.returncode, stdout, stderr)


def run_luigi(*args: str, env: dict[str, str] | None = None) -> Result:
    """`luigi --module ...` exactly as a user types it (plus --no-lock: tests may repeat a command line)."""
    return run_cmd([str(BIN / "luigi"), *args, "--local-scheduler", "--no-lock"], env=env)


def run_mltf(*args: str, env: dict[str, str] | None = None) -> Result:
    return run_cmd([str(BIN / "mltf-flow"), *args], env=env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MlflowServer:
    uri: str
    root: Path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` (sqlite backend, proxied artifacts) on 127.0.0.1 and a free port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # readiness poll, not a sleep-as-synchronisation: /health answers once it serves
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("mlflow server did not answer /health within 120 s")
        time.sleep(0.2)
    try:
        yield MlflowServer(uri, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def git_project(src: Path, dest: Path) -> Path:
    """Copy a project into a fresh git repository with one commit."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for args in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"],
                 ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", "-C", str(dest), *args], check=True, capture_output=True)
    return dest


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Poll ``predicate`` until it returns something truthy (a readiness check, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def slurm_available() -> bool:
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def worker_jobs(name: str = "mltf-worker,mltf-gpu") -> list[str]:
    """Ids of our Dask worker jobs (CPU and GPU profiles) that SLURM still lists as pending/running/completing."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture
def slurm() -> None:
    if not slurm_available():
        pytest.skip("no SLURM cluster: run `tests/infra/slurm.sh up` as root (make test does)")


def popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.Popen([str(BIN / "luigi"), *args, "--local-scheduler", "--no-lock"], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(proc: subprocess.Popen[str], marker: str) -> str:
    """Read the process output until a line contains ``marker`` (the event we wait for)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"process ended without printing {marker!r}:\n{''.join(seen)[-3000:]}")


def no_worker_jobs() -> None:
    wait_until(lambda: not worker_jobs(), 30, "SLURM to list no mltf-worker job")


def make_wheel(dest: Path, name: str, version: str, module_source: str) -> Path:
    """A minimal pure-Python wheel (one module ``name``), so environment builds install a real package
    without reaching an index."""
    import base64
    import hashlib
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: mltf-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel
