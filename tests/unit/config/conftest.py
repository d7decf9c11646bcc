"""Isolation for the configuration tests: no developer, site or repository settings or profiles leak in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import isolate_profiles


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate_profiles(tmp_path, monkeypatch)
    return tmp_path
