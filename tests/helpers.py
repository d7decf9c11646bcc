"""Helpers shared by the tests (fixtures live in the conftest.py files): paths, running the user's commands
(`luigi`, `mltf-flow`) in subprocesses, polling, git projects, profile isolation, SLURM worker jobs and small
wheels for environment builds."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "pipelines" / "jet_tagging"
BIN = Path(sys.executable).parent
#: The profiles the repository ships for its CI cluster (slurm-ci, slurm-ci-gpu, ...) and the package's own.
REPO_PROFILES = REPO / "configs" / "profiles.yaml"
SHIPPED_PROFILES = REPO / "mltf_flow" / "profiles.yaml"
SITE_SETTINGS = (Path("/etc/mltf_flow/profiles.yaml"), Path("/etc/mltf_flow/config.yaml"))
#: The ``write_profiles`` fixture: writes a profiles file from a dict (dumped as YAML) or a str (verbatim) and
#: lists it in MLTF_FLOW_PROFILE_FILES.
WriteProfiles = Callable[[object], Path]


# -- commands as users type them ---------------------------------------------------------------------------------


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


def popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`luigi ...` started in the background (stdout and stderr merged), for tests that act while it runs."""
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.Popen([str(BIN / "luigi"), *args, "--local-scheduler", "--no-lock"], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


#: What a normal run must not show on the console: Python warnings (``UserWarning: Port 8787 is already in use``),
#: Dask's log lines (``2026-... - distributed.scheduler - INFO - ...``), tracebacks.
NOISE = re.compile(r"^.*(\b\w*Warning: |warnings\.warn\(| - distributed\.\S+ - | - dask_jobqueue\.\S+ - "
                   r"|^Traceback ).*$", re.MULTILINE)


def assert_quiet_console(output: str) -> None:
    """A normal run's console: no Python warning, no Dask log line, no traceback (see NOISE)."""
    noise = NOISE.findall(output)
    assert not noise, "noise on the console:\n" + "\n".join(noise) + "\n---\n" + output[-4000:]


def read_until(proc: subprocess.Popen[str], marker: str) -> str:
    """Read the process output until a line contains ``marker`` (the event we wait for)."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"process ended without printing {marker!r}:\n{''.join(seen)[-3000:]}")


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MlflowServer:
    """What the ``mlflow_server`` fixture (tests/conftest.py) hands to a test."""

    uri: str
    root: Path


@contextlib.contextmanager
def served_store(backend_store_uri: str, scratch: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 over ``backend_store_uri`` (proxied artifacts under ``scratch``, its
    log in ``scratch/server.log``); yields its URL once /health answers."""
    port = free_port()
    scratch.mkdir(parents=True, exist_ok=True)
    log_path = scratch / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_store_uri, "--artifacts-destination",
             str(scratch / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=scratch,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:  # readiness poll, not a sleep-as-synchronisation: /health answers once it serves
                if proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: {log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not answer /health within 120 s: {log_path.read_text()}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


#: Set to a scheduler's address, it makes the ``local`` profile attach to that scheduler (its
#: ``scheduler_address``) instead of starting a LocalCluster of its own.
ATTACH_LOCAL = "MLTF_FLOW_SET__LOCAL__SCHEDULER_ADDRESS"


@contextlib.contextmanager
def shared_scheduler() -> Iterator[str]:
    """A Dask scheduler (plain TCP on 127.0.0.1, threaded workers) in this process, for tests whose steps
    never use Dask and that run many of them: each invocation that runs a step starts and closes a LocalCluster
    of its own by default (~3 s here); with :data:`ATTACH_LOCAL` set to the address yielded here it attaches
    instead. It has as many workers as the ``local`` profile (a step waits for its profile's workers). Starting,
    closing and securing clusters is tested elsewhere (test_clusters.py, test_security.py, the fault suite),
    never with this."""
    from distributed import LocalCluster

    from mltf_flow.clusters.dashboard import local_cluster_options
    from mltf_flow.clusters.profiles import get_profile

    workers = get_profile("local").expected_workers
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1", **local_cluster_options(None)) as cluster:
        yield str(cluster.scheduler_address)


# -- projects, profiles, wheels ------------------------------------------------------------------------------------


def seed_store(work_dir: Path, template: Path) -> Path:
    """``work_dir`` with a migrated, empty tracking store: a copy of the ``store_template`` fixture
    (tests/conftest.py). Module-scoped fixtures that make a work dir of their own use it too: migrating a new
    store costs 2-6 s of this machine's time, a copy milliseconds."""
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, work_dir / "mlflow.db")
    return work_dir


def git_project(src: Path, dest: Path) -> Path:
    """Copy a project into a fresh git repository with one commit."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for args in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"],
                 ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", "-C", str(dest), *args], check=True, capture_output=True)
    return dest


def isolate_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profiles: Path | None = None) -> None:
    """No developer, site or repository profiles leak in: HOME and CWD are ``tmp_path`` (so ~/.config/... is the
    test's), no profile variables, no default-profile setting. ``profiles`` (e.g.
    :data:`REPO_PROFILES`) is added on top of the shipped ones through MLTF_FLOW_PROFILE_FILES."""
    site = [str(path) for path in SITE_SETTINGS if path.exists()]
    if site:
        pytest.skip(f"{', '.join(site)} holds site settings that would change every result")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    if profiles is None:
        monkeypatch.delenv("MLTF_FLOW_PROFILE_FILES", raising=False)
    else:
        monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", str(profiles))
    monkeypatch.delenv("MLTF_FLOW_PROFILE", raising=False)
    monkeypatch.delenv("MLFLOW_ENV_ROOT", raising=False)
    for name in list(os.environ):
        if name.startswith(("MLTF_FLOW_SET__", "MLTF_FLOW_PROFILE__")) or name == "MLTF_FLOW_PROFILES":
            monkeypatch.delenv(name)


def make_wheel(dest: Path, name: str, version: str, module_source: str) -> Path:
    """A minimal pure-Python wheel (one module ``name``), so environment builds install a real package
    without reaching an index."""
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


# -- SLURM (tests marked `slurm` only) -------------------------------------------------------------------------------


def worker_jobs(name: str = "mltf-worker,mltf-gpu") -> list[str]:
    """Ids of our Dask worker jobs (CPU and GPU profiles) that SLURM still lists as pending/running/completing."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def no_worker_jobs() -> None:
    wait_until(lambda: not worker_jobs(), 30, "SLURM to list no mltf-worker job")


def luigid_api(base: str, method: str, data: dict[str, Any]) -> Any:
    """One call of luigid's JSON API (what the visualiser asks)."""
    url = f"{base}/api/{method}?" + urllib.parse.urlencode({"data": json.dumps(data)})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["response"]


class Luigid:
    """A real `luigid` on 127.0.0.1 and a free port, its logs and state file in ``state_dir``; ``stop()`` sends
    SIGTERM, on which luigid writes its state file."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)  # luigid does not create its log directory
        port = free_port()
        with open(state_dir / "luigid.out", "wb") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "luigid"), "--address", "127.0.0.1", "--port", str(port), "--logdir", str(state_dir),
                 "--state-path", str(state_dir / "luigid-state.pickle")],
                stdout=out, stderr=subprocess.STDOUT,
            )
        self.base = f"http://127.0.0.1:{port}"
        try:
            wait_until(self._answers, 60, "luigid to answer")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        try:
            luigid_api(self.base, "task_list", {"status": "RUNNING", "upstream_status": "", "search": ""})
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
