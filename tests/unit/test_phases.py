"""mltf_flow.phases: a phase pauses only when MLTF_PAUSE_AT names it, leaves a marker with its pid, and goes on
once released (and from then on)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mltf_flow import phases
from tests.helpers import REPO, wait_until

SCRIPT = "from mltf_flow import phases; phases.reached('stage.done', 'train'); print('passed', flush=True)"


def _reach(pause_at: str | None, pause_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, phases.PAUSE_DIR_ENV: str(pause_dir)}
    env.pop(phases.PAUSE_AT_ENV, None)
    if pause_at is not None:
        env[phases.PAUSE_AT_ENV] = pause_at
    return subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("pause_at", [None, "", "stage.checksummed", "stage.done:features"])
def test_other_phases_do_not_pause(tmp_path: Path, pause_at: str | None) -> None:
    proc = _reach(pause_at, tmp_path)
    assert proc.communicate(timeout=60)[0] == "passed\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("pause_at", ["stage.done", "stage.done:train"])
def test_the_named_phase_pauses_until_released(tmp_path: Path, pause_at: str) -> None:
    proc = _reach(pause_at, tmp_path)
    marker = phases.marker("stage.done", tmp_path)
    try:
        wait_until(marker.exists, 60, "the marker")
        assert marker.read_text() == f"{proc.pid}\n"
        assert proc.poll() is None  # paused
        phases.release_file("stage.done", tmp_path).touch()
        assert proc.communicate(timeout=60)[0] == "passed\n"
    finally:
        proc.kill()
    marker.unlink()
    assert _reach(pause_at, tmp_path).communicate(timeout=60)[0] == "passed\n"  # released: no second pause
    assert not marker.exists()
