"""Isolation for the cluster-profile tests: no developer, site or repository profiles leak in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import isolate_profiles


@pytest.fixture(autouse=True)
def isolated_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and CWD are tmp_path (so ~/.config/... and ./profiles.yaml are the test's), no profile variables."""
    isolate_profiles(tmp_path, monkeypatch)
    return tmp_path
