"""GPU check of the example's FSDP entry point (``train_fsdp``): one rank on one GPU, NCCL, bf16 mixed precision
against fp32, the loss curves printed side by side and compared within a stated tolerance.

Run from the repository root on a machine with one NVIDIA GPU, no server needed (a sqlite MLflow store in a
temporary directory)::

    .venv/bin/python benchmarks/gpu_fsdp_check.py [--epochs 6] [--events-per-file 4000] [--out DIR]

(``--allow-cpu`` runs the same on CPU with bf16 forced, to check the script itself; slow.) Exit code 0 when both
trainings ran, the bf16 run really computed in bfloat16 (its run parameter ``compute_dtype``), a sharded
checkpoint per epoch was saved, and every epoch's bf16 train loss is within ``--tolerance`` (relative) of fp32's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "mltf_flow" / "examples" / "jet_tagging"
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: train_loss=([0-9.]+) val_loss=([0-9.]+) val_accuracy=([0-9.]+)")


def run(args: list[str], env: dict[str, str], cwd: Path = EXAMPLE) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n-files", type=int, default=2)
    parser.add_argument("--events-per-file", type=int, default=4000)
    # bf16 keeps 8 bits of mantissa (~3 significant digits) in the forward and backward; with fp32 master
    # weights and fp32 gradient reduction the curves drift apart slowly, by a few per mille per epoch here.
    # 5% relative per epoch passes that and fails a broken policy (a diverging or non-learning run).
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", tempfile.gettempdir())))
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit(f"no GPU visible to torch {torch.__version__} (cuda {torch.version.cuda}): nothing to check")
    if torch.cuda.is_available():
        print(f"torch {torch.__version__}, cuda {torch.version.cuda}, nccl {torch.cuda.nccl.version()}, "
              f"{torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    with tempfile.TemporaryDirectory(prefix="mltf-fsdp-gpu-") as tmp:
        base = Path(tmp)
        uri = f"sqlite:///{base}/mlflow.db"
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MLFLOW_RUN_ID"):
            env.pop(name, None)
        from mlflow import MlflowClient

        client = MlflowClient(uri)  # artifacts in the temporary directory too, never in the repository
        experiment = client.create_experiment("gpu_fsdp_check", artifact_location=(base / "artifacts").as_uri())
        env["MLFLOW_EXPERIMENT_NAME"] = "gpu_fsdp_check"
        run([sys.executable, "generate.py", "--out-dir", str(base / "sample"), "--n-files", str(args.n_files),
             "--events-per-file", str(args.events_per_file), "--seed", "5"], env)
        files = sorted((base / "sample").glob("*.root"))
        manifest = base / "manifest.json"
        manifest.write_text(json.dumps({"files": [{"name": f.name, "path": str(f)} for f in files]}))
        run([sys.executable, "features.py", "--manifest", str(manifest)], env)
        (features,) = base.rglob("features.mltft")
        curves: dict[str, list[float]] = {}
        for precision in ("fp32", "bf16" if args.allow_cpu and not torch.cuda.is_available() else "auto"):
            run_id = client.create_run(experiment).info.run_id
            started = time.monotonic()
            out = run([sys.executable, "train_fsdp.py", "--features", str(features), "--epochs", str(args.epochs),
                       "--precision", precision], {**env, "MLFLOW_RUN_ID": run_id})
            seconds = time.monotonic() - started
            data = client.get_run(run_id).data
            curves[data.params["compute_dtype"]] = [float(m.group(2)) for m in EPOCH_LINE.finditer(out)]
            print(f"--precision {precision}: compute_dtype {data.params['compute_dtype']}, {seconds:.1f} s, "
                  f"checkpoint {data.tags.get('mltf.checkpoint.latest')} (sharded: "
                  f"{data.tags.get('mltf.checkpoint.sharded') == data.tags.get('mltf.checkpoint.latest')})")
            if int(data.tags.get("mltf.checkpoint.epoch", "-1")) != args.epochs - 1:
                sys.exit(f"no checkpoint of the last epoch in run {run_id}")

    fp32, bf16 = curves.get("float32", []), curves.get("bfloat16", [])
    print("epoch  train_loss fp32  train_loss bf16  relative difference")
    worst = 0.0
    for epoch, (a, b) in enumerate(zip(fp32, bf16, strict=False)):
        worst = max(worst, abs(b - a) / a)
        print(f"{epoch:5d}  {a:15.6f}  {b:15.6f}  {abs(b - a) / a:19.2e}")
    ok = len(fp32) == len(bf16) == args.epochs and worst <= args.tolerance and bf16[-1] < bf16[0]
    verdict = "MATCH" if ok else "MISMATCH"
    print(f"{verdict}: bf16 mixed precision vs fp32, worst relative difference {worst:.2e} "
          f"(tolerance {args.tolerance:g}), bf16 curve learns: {bool(bf16) and bf16[-1] < bf16[0]}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_fsdp_check.json").write_text(json.dumps({"fp32": fp32, "bf16": bf16, "worst": worst,
                                                              "tolerance": args.tolerance, "ok": ok}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
