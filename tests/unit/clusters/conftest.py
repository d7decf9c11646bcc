"""Isolation for the cluster-profile tests: no developer, site or repository profiles leak in."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

SITE_PROFILES = Path("/etc/mltf_flow/profiles.yaml")


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and CWD are tmp_path (so ~/.config/... and ./profiles.yaml are the test's), no profile variables."""
    if SITE_PROFILES.exists():
        pytest.skip(f"{SITE_PROFILES} exists on this machine and would change every result")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLTF_FLOW_PROFILES", raising=False)
    for name in list(os.environ):
        if name.startswith("MLTF_FLOW_PROFILE__"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLTF_FLOW_WORK_DIR", str(tmp_path / "work"))
    return tmp_path


def _dump(data: object) -> str:
    return data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
def write_cwd_profiles(tmp_path: Path) -> Callable[[object], Path]:
    """Write ./profiles.yaml (a dict is dumped as YAML; a str is written verbatim)."""

    def write(data: object) -> Path:
        path = tmp_path / "profiles.yaml"
        path.write_text(_dump(data))
        return path

    return write


@pytest.fixture(scope="session")
def _slurm_probe() -> str | None:
    """None when a real SLURM answers here (`sbatch` on PATH and `sinfo` succeeds), else why not."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (no SLURM on this machine)"
    try:
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if proc.returncode != 0:
        return f"sinfo failed (exit {proc.returncode}): {proc.stderr.strip()}"
    return None


@pytest.fixture
def require_slurm(_slurm_probe: str | None) -> None:
    """Skip the test unless a real SLURM answers (`sbatch --test-only` needs one)."""
    if _slurm_probe is not None:
        pytest.skip(f"needs a running SLURM: {_slurm_probe}")
