"""Needs `corpusdep`, which only the project's python_env.yaml environment has."""

from pathlib import Path

import corpusdep

SEED = 1

Path("dep_version.txt").write_text(f"{corpusdep.VERSION}\n")
