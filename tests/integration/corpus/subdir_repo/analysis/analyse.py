"""A project in a subdirectory of a git repository; writes its outputs next to itself."""

import argparse
import time
from pathlib import Path

SEED = 1

parser = argparse.ArgumentParser()
parser.add_argument("--k", type=int, required=True)
args = parser.parse_args()
rows = [f"{i},{(i * SEED) % args.k}" for i in range(10)]
Path("results.csv").write_text("i,bin\n" + "\n".join(rows) + "\n")
Path("hist.png").write_bytes(b"\x89PNG\r\n\x1a\n" + str(time.time_ns()).encode())
