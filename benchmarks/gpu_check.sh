#!/usr/bin/env bash
# GPU check for the DDP launcher, for a machine with one NVIDIA GPU (run from the repository root).
# Needs torch with CUDA; dask/distributed come from wheels in .whl/ when the machine has none:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl dask==2026.8.0 \
#       distributed==2026.8.0 tornado zict tblib locket partd
# Prints: the inventory, the RDMA ports seen (none expected off-site), the launcher/torchrun throughput
# ratio with NCCL on 1 GPU, and which NCCL variables reached the rank from the profile's fabric.
set -euo pipefail
out=${OUT:-/tmp/mltf-gpu-check}; mkdir -p "$out"
if ! python3 -c "import distributed" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'gpus', torch.cuda.device_count())"
python3 -c "from mltf_flow.fabric.nccl import detect_roce; print('RDMA ports:', detect_roce('/sys'))"
python3 benchmarks/ddp_throughput.py --backend nccl --ranks 1 --repeats 3 --steps 3000 --width 2048 \
  --nccl-debug-dir "$out/nccl" 2>&1 | grep -v -E "INFO|WARNING|UserWarning|warnings.warn" | tee "$out/ddp_gpu.txt"
