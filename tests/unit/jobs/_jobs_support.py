"""Shared by the tests of mltf_flow.jobs: profile isolation and whether a real SLURM answers on this machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import slurm_available

REPO = Path(__file__).resolve().parents[3]
REPO_PROFILES = REPO / "configs" / "profiles.yaml"
SHIPPED_PROFILES = REPO / "mltf_flow" / "profiles.yaml"


def isolate_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the shipped profiles and the repository's configs/profiles.yaml: HOME and CWD are tmp_path (no
    ~/.config or ./profiles.yaml of the developer), no profile variables, no default-profile setting."""
    if Path("/etc/mltf_flow/profiles.yaml").exists() or Path("/etc/mltf_flow/config.yaml").exists():
        pytest.skip("/etc/mltf_flow holds site settings that would change every result")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLTF_FLOW_PROFILES", str(REPO_PROFILES))
    monkeypatch.delenv("MLTF_FLOW_PROFILE", raising=False)
    monkeypatch.delenv("MLFLOW_ENV_ROOT", raising=False)
    for name in list(os.environ):
        if name.startswith("MLTF_FLOW_PROFILE__"):
            monkeypatch.delenv(name)


def require_slurm() -> None:
    if not slurm_available():
        pytest.skip("needs a running SLURM: run `tests/infra/slurm.sh up` as root (make test does)")
