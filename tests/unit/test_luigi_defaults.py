"""Luigi's settings once mltf_flow's steps are imported, from any directory (no luigi.cfg needed): failures exit
non-zero; Luigi's command-line lock is off (steps are claimed by key)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import wait_until

FAILING = """
import luigi
import mltf_flow.step  # noqa: F401  (what a user's pipeline module imports)


class Boom(luigi.Task):
    def run(self):
        raise RuntimeError("boom")
"""


def luigi_rc(tmp_path: Path, config: str | None) -> int:
    (tmp_path / "boom_module.py").write_text(FAILING)
    env = {k: v for k, v in os.environ.items() if k != "LUIGI_CONFIG_PATH"}
    if config is not None:
        (tmp_path / "luigi.cfg").write_text(config)
    env["PYTHONPATH"] = str(tmp_path)
    luigi = Path(sys.executable).parent / "luigi"
    proc = subprocess.run([str(luigi), "--module", "boom_module", "Boom", "--local-scheduler", "--no-lock"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode


@pytest.mark.parametrize(("config", "expected"), [
    (None, 30),                                           # no luigi.cfg anywhere: our default
    ("[retcode]\ntask_failed = 7\n", 7),                  # the user's own value wins
    ("[retcode]\nmissing_data = 3\n", 30),                # keys they do not set still get ours
])
def test_failed_task_exit_code(tmp_path: Path, config: str | None, expected: int) -> None:
    assert luigi_rc(tmp_path, config) == expected


HOLD = """
import os
import time

import luigi
import mltf_flow.step  # noqa: F401


class Hold(luigi.Task):
    def complete(self):
        return False

    def run(self):
        with open("started", "a") as out:
            out.write("x\\n")
        while not os.path.exists("release"):
            time.sleep(0.05)
"""


def _started(tmp_path: Path) -> int:
    path = tmp_path / "started"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("config", [None, "[core]\nno_lock = false\n"])
def test_the_command_line_lock_is_off_unless_configured(tmp_path: Path, config: str | None) -> None:
    (tmp_path / "hold_module.py").write_text(HOLD)
    if config is not None:
        (tmp_path / "luigi.cfg").write_text(config)
    env = {k: v for k, v in os.environ.items() if k != "LUIGI_CONFIG_PATH"}
    env["PYTHONPATH"] = str(tmp_path)
    argv = [str(Path(sys.executable).parent / "luigi"), "--module", "hold_module", "Hold", "--local-scheduler",
            "--lock-pid-dir", str(tmp_path / "pids")]
    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: _started(tmp_path) == 1, 60, "the first run")
        second = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if config is None:  # mltf_flow's default: the same command line runs twice (steps are claimed by key)
            wait_until(lambda: _started(tmp_path) == 2, 60, "the second run")
        else:  # the user's own setting wins: Luigi's lock, exit code already_running
            assert second.wait(timeout=60) == 10
    finally:
        (tmp_path / "release").touch()
        assert first.wait(timeout=60) == 0
        if second is not None:
            second.wait(timeout=60)
    assert second.returncode == (0 if config is None else 10)
