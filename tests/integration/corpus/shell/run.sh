#!/usr/bin/env bash
# The MLproject entry point `main`: bash run.sh {n}
set -euo pipefail
SEED=1
mkdir -p out
seq "$1" > out/count.txt
echo "seed $SEED n $1 at $(date +%s%N)" >> run.log
