"""A conda project's entry point."""

from pathlib import Path

SEED = 1

Path("fitted.txt").write_text(f"seed {SEED}\n")
