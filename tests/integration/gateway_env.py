"""The gateway as its tests meet it: `mltf-flow gateway serve` as a real process on 127.0.0.1, in front of the
session's real `mlflow server`, trusting the real OIDC provider of tests/oidc_env.py, submitting to the real
SLURM of tests/infra/slurm.sh. Killed by PID (SIGTERM, or SIGKILL for the restart tests).

  write_config(dir, oidc, mlflow, **more)   a gateway.yaml (state under dir)
  GatewayProcess.start(config, env)        the server, started and healthy (/healthz answers 200)
  Api(url, token)                          httpx calls with a bearer token, answers as (status, json)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import BIN, REPO, free_port, wait_until

#: The gateway's environment: the site's profiles (slurm-ci), the repo's venv; never an MLflow credential.
BASE_ENV = {"MLTF_FLOW_PROFILE_FILES": str(REPO / "configs" / "profiles.yaml"), "PYTHONUNBUFFERED": "1"}


def write_config(directory: Path, issuer: str, mlflow_uri: str, **more: Any) -> Path:
    port = free_port()
    config = {
        "public_url": f"http://127.0.0.1:{port}", "host": "127.0.0.1", "port": port,
        "state_dir": str(directory / "state"), "mlflow_upstream": mlflow_uri, "mlflow_ui": mlflow_uri,
        "oidc": {"issuer": issuer, "audience": "mltf-gateway", "client_id": "mltf-cli", "admin_value": "mltf-admins"},
        "backend": {"profile": "slurm-ci", "time": "00:05:00", "poll_interval": 0.5, "max_poll_interval": 2.0},
        "pipeline": {"time": "00:15:00", "profile": "local"},
        "poll_interval": 0.5,
        **more,
        # Tests poll faster than users do (`mltf-flow submissions show --wait` backs off from 2 s).
        "limits": {"requests_per_minute": 600, "burst": 100, **more.get("limits", {})},
    }
    path = directory / "gateway.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class GatewayProcess:
    config: Path
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, config: Path, env: dict[str, str] | None = None, log_name: str = "gateway.log") -> GatewayProcess:
        data = yaml.safe_load(config.read_text())
        log = config.parent / log_name
        full = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}, **BASE_ENV,
                **(env or {})}
        with log.open("ab") as out:
            proc = subprocess.Popen([str(BIN / "mltf-flow"), "gateway", "serve", "--config", str(config)],
                                    stdout=out, stderr=subprocess.STDOUT, env=full, cwd=config.parent)
        gateway = cls(config, str(data["public_url"]), proc, log)
        wait_until(gateway.healthy, 60, f"the gateway at {gateway.url} to answer /healthz:\n{gateway.log_tail}")
        return gateway

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.proc.returncode}:\n{self.log_tail}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@dataclass
class Api:
    """The REST API with one user's token (None: no Authorization header)."""

    url: str
    token: str | None

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        answer = httpx.request(method, f"{self.url}{path}", headers=headers, timeout=120, **kwargs)
        try:
            body = answer.json()
        except ValueError:
            body = answer.text
        return answer.status_code, body

    def upload(self, archive: Path) -> str:
        status, body = self.call("PUT", "/api/v1/archives", content=archive.read_bytes())
        assert status == 201, body
        return str(body["digest"])

    def submit(self, request: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
        headers = {"Idempotency-Key": key} if key else {}
        return self.call("POST", "/api/v1/submissions", json=request, headers=headers)

    def get(self, submission_id: str) -> dict[str, Any]:
        status, body = self.call("GET", f"/api/v1/submissions/{submission_id}")
        assert status == 200, body
        return dict(body)

    def ended(self, submission_id: str, timeout: float = 300) -> dict[str, Any]:
        """The submission once it ended (polled as `mltf-flow submissions show --wait` does)."""
        wait_until(lambda: self.get(submission_id)["state"] in ("finished", "failed", "cancelled"), timeout,
                   f"submission {submission_id} to end", interval=0.5)
        return self.get(submission_id)
