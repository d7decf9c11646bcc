#!/usr/bin/env bash
# GPU checks for a machine with one NVIDIA GPU (run from the repository root): `gpu_check.sh [ddp] [gds]`
# (both by default). Needs torch with CUDA; dask/distributed (ddp) and kvikio (gds) come from wheels in .whl/
# when the machine has none:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl dask==2026.8.0 \
#       distributed==2026.8.0 tornado zict tblib locket partd kvikio-cu13==26.10.0 libkvikio-cu13==26.10.0 \
#       rapids-logger==0.3.0
# ddp: launcher/torchrun throughput ratio with NCCL on 1 GPU, and which NCCL variables reached the rank.
# gds: every read backend (kvikio, torch_gds, posix) byte-exact onto the GPU with GB/s, compat mode, and the
#      behaviour with allow_compat_mode false; then the tensor-file load vs dd/cat ratios.
set -euo pipefail
out=${OUT:-/tmp/mltf-gpu-check}; mkdir -p "$out"
if [ -d .whl ] && ! python3 -c "import distributed, kvikio" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
sections=${*:-ddp gds}
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'gpus', torch.cuda.device_count())"
python3 -c "from mltf_flow.fabric.nccl import detect_roce; print('RDMA ports:', detect_roce('/sys'))"
python3 -c "from mltf_flow.fabric.gds import probe_gds; print('GDS probe:', probe_gds().summary())"
for section in $sections; do
  case $section in
    ddp)
      python3 benchmarks/ddp_throughput.py --backend nccl --ranks 1 --repeats 3 --steps 3000 --width 2048 \
        --nccl-debug-dir "$out/nccl" 2>&1 | grep -v -E "INFO|WARNING|UserWarning|warnings.warn" | tee "$out/ddp_gpu.txt" ;;
    gds)
      findmnt -T "$PWD" || true
      python3 benchmarks/gds_gpu_check.py --size-gib 1 --dir "$PWD" 2>&1 | tee "$out/gds_backends.txt" || true
      for backend in auto kvikio; do
        python3 benchmarks/gds_read.py --device cuda --backend $backend --repeats 3 --dir "$PWD" 2>&1 \
          | tee "$out/gds_read_$backend.txt" || true   # a missed goal is a result to report, not a stop
      done ;;
  esac
done
