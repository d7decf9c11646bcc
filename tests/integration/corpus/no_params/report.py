"""An entry point without parameters."""

import time
from pathlib import Path

SEED = 1

Path("report.txt").write_text(f"seed {SEED} at {time.time_ns()}\n")
