"""Who may use the Dask clusters mltf_flow starts: only processes holding the cluster's TLS key.

A real pipeline step (the `gate` step of the `branches` project, which itself submits a task through a
plain ``Client(DASK_SCHEDULER_ADDRESS)``) is held at its gate, and the tests knock at the scheduler its run
recorded in ``mltf.dask_scheduler``: one gated pipeline on SLURM workers, and one on the ``local`` profile
shared by the two tests that knock at a local cluster (:func:`local_gate`; they come after the SLURM test,
so that the shared gate, closed at the end of the module, is not held open while the SLURM test runs)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import popen, read_until, seed_store, worker_jobs
from tests.integration.mlflow_queries import runs, sqlite_uri

pytestmark = pytest.mark.slow
BRANCHES = Path(__file__).parent.parent / "projects" / "branches"

# What someone without the key tries, one way per process (a refused Client left to the garbage collector
# can deadlock the next one's start): "plain" is a client with dask's default configuration, "tcp" the same
# port over plain TCP, "own-cert" a client with TLS credentials of its own; then it reads the files named.
# Prints one line of JSON.
KNOCK = """
import json, sys
from distributed import Client
from distributed.security import Security
how, address = sys.argv[1], sys.argv[2]
security = Security.temporary() if how == "own-cert" else None
addr = address.replace("tls://", "tcp://") if how == "tcp" else address
out = {}
try:
    with Client(addr, timeout="5s", set_as_default=False, security=security) as client:
        out[how] = "CONNECTED: " + str(client.submit(sum, [1, 2], pure=False).result(timeout=10))
except Exception as exc:
    out[how] = "refused: " + type(exc).__name__ + ": " + str(exc)[:200]
for path in sys.argv[3:]:
    try:
        with open(path) as handle:
            out[path] = "READ " + str(len(handle.read())) + " characters"
    except OSError as exc:
        out[path] = "refused: " + type(exc).__name__
print(json.dumps(out), flush=True)
"""
WAYS = ("plain", "tcp", "own-cert")


@dataclass
class Gate:
    address: str
    credentials: Path  # the cluster's directory under <work_dir>/dask-security
    output: str  # what the pipeline printed so far
    run: object  # the step's MLflow run (RUNNING while we knock)


@contextmanager
def running_gate(work_dir: Path, tmp_path: Path, profile: str = "local") -> Iterator[Gate]:
    """A pipeline held at its gate step; on leaving, the gate opens and the pipeline must succeed and leave
    no credentials behind."""
    gate = tmp_path / "gate"
    proc = popen("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(BRANCHES), "--run-step",
                 "gate", "--overrides", json.dumps({"gate_file": str(gate)}), "--profile", profile,
                 env={"MLTF_FLOW_WORK_DIR": str(work_dir)})
    try:
        output = read_until(proc, "gate: waiting")
        (run,) = [r for r in runs(sqlite_uri(work_dir), "branches") if r.data.tags.get("mltf.step") == "gate"]
        (credentials,) = (work_dir / "dask-security").glob("cluster-*")
        yield Gate(run.data.tags["mltf.dask_scheduler"], credentials, output, run)
        gate.touch()
        rest = proc.communicate(timeout=180)[0]
        assert proc.returncode == 0, output + rest
        output += rest
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not credentials.exists(), "the cluster's credentials outlived it"
    assert "PRIVATE KEY" not in output


def knock(python: list[str], address: str, *paths: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """What each way in gets (see KNOCK) when ``python`` tries it."""
    answer: dict[str, str] = {}
    for how in WAYS:
        done = subprocess.run([*python, "-c", KNOCK, how, address, *map(str, paths)], capture_output=True,
                              text=True, timeout=120, env=env, cwd="/")
        assert done.returncode == 0, done.stderr[-3000:]
        answer.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return answer


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private(credentials: Path) -> None:
    """The directories 0700, the files 0600, all ours."""
    for path in (credentials.parent, credentials):
        assert mode(path) == 0o700 and path.stat().st_uid == os.getuid(), (path, oct(mode(path)))
    files = sorted(p.name for p in credentials.iterdir())
    assert files == ["cert.pem", "key.pem"]
    for name in files:
        assert mode(credentials / name) == 0o600, (name, oct(mode(credentials / name)))


def assert_no_secret_in_run(run: object, credentials: Path) -> None:
    key_body = (credentials / "key.pem").read_text().splitlines()[1]
    data = run.data  # type: ignore[attr-defined]
    for value in [*data.tags.values(), *data.params.values()]:
        assert "PRIVATE KEY" not in value and key_body not in value


@pytest.mark.slurm
def test_slurm_workers_connect_over_tls(tmp_path: Path) -> None:
    from distributed import Client

    from mltf_flow.clusters.security import from_directory

    work_dir = Path(os.environ["MLTF_FLOW_WORK_DIR"])
    with running_gate(work_dir, tmp_path, profile="slurm-ci") as gate:
        assert gate.address.startswith("tls://"), gate.address
        assert_private(gate.credentials)
        assert_no_secret_in_run(gate.run, gate.credentials)
        security = from_directory(gate.credentials).security()
        with Client(gate.address, timeout="30s", set_as_default=False, security=security) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert workers and all(a.startswith("tls://") for a in workers), workers
            jobs = {v for v in client.run(lambda: os.environ.get("SLURM_JOB_ID", "")).values() if v}
        assert jobs and jobs <= set(worker_jobs()), (jobs, worker_jobs())
        for job in jobs:  # what SLURM holds of the script: paths of the credentials, never the key
            script = subprocess.run(["scontrol", "write", "batch_script", job, "-"], capture_output=True,
                                    text=True, check=True).stdout
            assert f"--tls-key {gate.credentials / 'key.pem'}" in script, script
            assert "PRIVATE KEY" not in script
        answer = knock([sys.executable], gate.address,
                       env={k: v for k, v in os.environ.items() if not k.startswith("DASK_")})
        assert all(v.startswith("refused") for v in answer.values()), answer


@pytest.fixture(scope="module")
def local_gate(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Iterator[Gate]:
    """One gated pipeline on the ``local`` profile, in a work dir other users may enter (pytest's tmp_path is
    under a 0700 directory: then only the modes of the credentials keep them out). Shared by the tests that
    knock at a local cluster: each only needs *a* running cluster to knock at, and one costs a pipeline
    start (~15 s here). On teardown the gate opens, and the pipeline must succeed and leave no credentials
    behind (the checks of :func:`running_gate`)."""
    path = Path(tempfile.mkdtemp(prefix="mltf-security-", dir="/tmp"))
    try:
        path.chmod(0o755)
        seed_store(path, store_template)
        with running_gate(path, tmp_path_factory.mktemp("local-gate")) as gate:
            yield gate
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_local_cluster_refuses_clients_without_its_key(local_gate: Gate) -> None:
    from distributed import Client

    from mltf_flow.clusters.security import from_directory

    gate = local_gate
    assert "gate: Dask task done on tls://" in gate.output  # the step's own plain Client(address) got in
    assert gate.address.startswith("tls://127.0.0.1:"), gate.address
    assert_private(gate.credentials)
    assert_no_secret_in_run(gate.run, gate.credentials)
    # A client with dask's default configuration, as any other process has it: no TLS.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    answer = knock([sys.executable], gate.address, env=env)
    assert all(v.startswith("refused") for v in answer.values()), answer
    security = from_directory(gate.credentials).security()
    with Client(gate.address, timeout="30s", set_as_default=False, security=security) as client:
        assert client.submit(sum, [2, 3], pure=False).result(timeout=60) == 5


def _python_for_nobody() -> list[str] | None:
    """A python that user nobody may run and that imports distributed (ours may live under /root)."""
    import distributed

    site = str(Path(distributed.__file__).parent.parent)
    for python, env in ((sys.executable, []), ("/usr/bin/python3", [f"PYTHONPATH={site}"])):
        command = ["runuser", "-u", "nobody", "--", "env", "-i", *env, python]
        if subprocess.run([*command, "-c", "import distributed"], capture_output=True, cwd="/").returncode == 0:
            return command
    return None


def test_another_local_user_cannot_use_the_cluster(local_gate: Gate) -> None:
    if shutil.which("runuser") is None:
        pytest.skip("runuser (util-linux) is not installed: cannot act as a second user")
    if subprocess.run(["id", "nobody"], capture_output=True).returncode != 0:
        pytest.skip("there is no user nobody to act as a second user")
    if os.getuid() != 0:
        pytest.skip("runuser -u nobody needs root")
    python = _python_for_nobody()
    if python is None:
        pytest.skip("user nobody can run no python that imports distributed (neither ours nor /usr/bin/python3)")
    from distributed import Client

    from mltf_flow.clusters.security import from_directory

    key, cert = local_gate.credentials / "key.pem", local_gate.credentials / "cert.pem"
    answer = knock(python, local_gate.address, key, cert)
    print(json.dumps(answer, indent=1))  # shown with -s: what nobody got
    assert all(v.startswith("refused") for v in answer.values()), answer
    assert answer[str(key)] == "refused: PermissionError"
    # Refused by a cluster that was serving all along (its key holder still gets in), not by one gone.
    security = from_directory(local_gate.credentials).security()
    with Client(local_gate.address, timeout="30s", set_as_default=False, security=security) as client:
        assert client.submit(sum, [2, 3], pure=False).result(timeout=60) == 5
