#!/usr/bin/env bash
# `make rucio-demo`: the example pipeline from a rucio:// dataset, against a real local Rucio server.
#   1. a fresh Rucio server (SQLite + gunicorn on 127.0.0.1) in $RUCIO_DEMO_HOME (default .rucio-demo/);
#   2. seeded: RSEs SITE_A (the remote site) and FACILITY_NVME (the facility), scope test, and the sample
#      data/jet_sample/*.root uploaded to SITE_A as the closed dataset test:jets_v1;
#   3. Rucio's transfer daemons in-process with a local-copy tool standing in for FTS;
#   4. luigi --module pipelines Train --dataset rucio://test:jets_v1 --profile rucio-demo
#      (a rule to FACILITY_NVME, waited for, verified, then features and training as usual).
# Everything it started is stopped at the end (by PID). Runs land in .mltf/ as with `make run`.
set -euo pipefail
cd "$(dirname "$0")/../../.."
H=$(realpath -m "${RUCIO_DEMO_HOME:-.rucio-demo}")
RV=.venv-rucio/bin/python
rm -rf "$H" && mkdir -p "$H/log"
$RV tests/infra/rucio/server.py up --home "$H" | head -1
DAEMONS=
cleanup() {
  [ -n "$DAEMONS" ] && kill "$DAEMONS" 2>/dev/null && wait "$DAEMONS" 2>/dev/null
  $RV tests/infra/rucio/server.py down --home "$H" >/dev/null 2>&1 || true
}
trap cleanup EXIT
RUCIO_CONFIG=$H/etc/server.cfg $RV tests/infra/rucio/daemons.py loop --home "$H" >"$H/log/daemons.log" 2>&1 &
DAEMONS=$!
.venv/bin/python tests/infra/rucio/seed.py --home "$H" --dataset test:jets_v1 data/jet_sample/*.root
# The client side, as a user would have it: a rucio.cfg and a token cache of its own.
export RUCIO_CONFIG=$H/etc/client.cfg TMPDIR=$H/tmp
unset RUCIO_ACCOUNT RUCIO_HOME
export MLTF_FLOW_PROFILE_FILES=${MLTF_FLOW_PROFILE_FILES:-$PWD/configs/profiles.yaml}  # rucio-demo
.venv/bin/luigi --module pipelines Train --dataset rucio://test:jets_v1 --profile rucio-demo --local-scheduler
echo
echo "Rule and replicas:"
.venv/bin/rucio rule list --did test:jets_v1 2>/dev/null || true
echo "Staged files: $H/rse/FACILITY_NVME/  -  runs: make ui (experiment jet_tagging, the 'stage' run)"
