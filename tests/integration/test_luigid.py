"""A real `luigid`: a running step shows the Dask dashboard link and progress as its Luigi status, and the
dashboard its run links to answers while the step runs."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BIN, REPO, Luigid, luigid_api, wait_until
from tests.integration.mlflow_queries import runs, sqlite_uri

pytestmark = pytest.mark.slow
PROJECTS = Path(__file__).parent / "projects"


@pytest.fixture
def luigid(tmp_path: Path) -> Iterator[str]:
    server = Luigid(tmp_path / "luigid")
    try:
        yield server.base
    finally:
        server.stop()


def test_running_step_reports_dashboard_and_progress_to_luigid(luigid: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    port = urllib.parse.urlsplit(luigid).port
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [str(BIN / "luigi"), "--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir",
         str(PROJECTS / "branches"), "--run-step", "gate", "--overrides", json.dumps({"gate_file": str(gate)}),
         "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port), "--no-lock"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        def running_status() -> dict[str, Any] | None:
            tasks = luigid_api(luigid, "task_list", {"status": "RUNNING", "upstream_status": "", "search": ""})
            for task in tasks.values():
                # The gate step submits one Dask task, then waits: progress must reach 1/1.
                if "1/1 Dask tasks" in (task.get("status_message") or ""):
                    return dict(task)
            return None

        try:
            task = wait_until(running_status, 30, "the step's Dask progress in luigid")
        except AssertionError:
            print(luigid_api(luigid, "task_list", {"status": "RUNNING", "upstream_status": "", "search": ""}))
            raise
        assert isinstance(task, dict)
        assert "dashboard http://127.0.0.1:" in task["status_message"]
        assert task["progress_percentage"] == 100  # the gate step's one Dask task is done
        assert task["tracking_url"].startswith("http://127.0.0.1:")
        # The dashboard the step's MLflow run links to (mltf.dask_dashboard) answers while the step runs.
        (run,) = [r for r in runs(sqlite_uri(os.environ["MLTF_FLOW_WORK_DIR"]), "branches")
                  if r.data.tags.get("mltf.step") == "gate"]
        assert run.info.status == "RUNNING"
        link = run.data.tags["mltf.dask_dashboard"]
        with urllib.request.urlopen(link, timeout=10) as response:
            assert response.status == 200 and link.endswith("/status")
    finally:
        gate.touch()
        out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
