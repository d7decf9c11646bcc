"""Failures exit non-zero from any directory once mltf_flow's steps are imported (no luigi.cfg needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
