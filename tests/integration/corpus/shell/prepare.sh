#!/usr/bin/env bash
# No MLproject entry: run as a script entry point (`-e prepare.sh`), as `mlflow run` does.
set -euo pipefail
SEED=1
printf 'id,value\n1,%s\n' "$SEED" > prepared.csv
date +%s%N > prepare.log
