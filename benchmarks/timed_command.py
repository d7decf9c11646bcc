"""One command's wall time, the unit the process-level benchmarks compare (cached_rerun, dag_scale,
peer_multistep, schedule_fire): a failed command ends the benchmark with its output, never a timing."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from pathlib import Path


def timed(cmd: list[str], env: Mapping[str, str], cwd: Path) -> float:
    """Seconds ``cmd`` took (output captured); SystemExit with the output's tail if it failed."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=dict(env), cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}"
                         f"{proc.stderr[-5000:]}")
    return elapsed
