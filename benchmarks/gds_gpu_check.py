"""GPU check of the GDS read path (run on a machine with an NVIDIA GPU; see gpu_check.sh).

For one file of ``--size-gib`` GiB on a real filesystem (not tmpfs): SHA-256 of the file, then for each
backend (kvikio, torch_gds, posix) a read onto ``cuda:0`` through ``mltf_flow.fabric.gds.read_tensor``
with the SHA-256 of the bytes that arrived, GB/s (cold: the file's pages evicted first; warm), and whether
cuFile ran in compat mode. Each configuration runs in a fresh process, because cuFile reads its
configuration once per process: the library default (no cufile.json), ``allow_compat_mode: true`` and
``allow_compat_mode: false`` (what a node without nvidia-fs does then is part of the output).

    python benchmarks/gds_gpu_check.py [--size-gib 1] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gds_read import evict  # the sibling benchmark (this directory is first on sys.path)

REPO = Path(__file__).resolve().parent.parent


def child(path: Path, backend: str, want: str) -> dict[str, object]:
    """One backend in this (fresh) process: cold and warm reads onto cuda:0, checked against ``want``."""
    import torch

    from mltf_flow.fabric.gds import read_tensor

    out: dict[str, object] = {"backend": backend, "cufile_json": os.environ.get("CUFILE_ENV_PATH_JSON", "none")}
    try:
        for label in ("cold", "warm"):
            if label == "cold":
                evict(path)
            tensor, info = read_tensor(path, device="cuda:0", backend=backend)
            digest = hashlib.sha256(tensor.cpu().numpy().tobytes()).hexdigest()
            out[label] = {"gbps": round(info.gbps, 2), "seconds": round(info.seconds, 3), "compat": info.compat,
                          "exact": digest == want, "notes": list(info.notes)}
            del tensor
            torch.cuda.empty_cache()
    except Exception as exc:  # the point is to record what happens
        out["error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=REPO)
    parser.add_argument("--child", nargs=3, metavar=("PATH", "BACKEND", "SHA256"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], args.child[2])))
        return 0
    from mltf_flow.fabric.gds import CufileConfig, probe_gds, write_cufile_json

    print("probe:", probe_gds().summary())
    mounts = Path("/proc/mounts").read_text()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="mltf-gds-check-") as tmp:
        print("filesystem of the test file:", subprocess.run(["df", "-T", tmp], capture_output=True, text=True)
              .stdout.splitlines()[-1], "(tmpfs!)" if " tmpfs " in mounts and "tmpfs" in tmp else "")
        path = Path(tmp) / "features.bin"
        size = int(args.size_gib * (1 << 30))
        block = os.urandom(1 << 24)
        digest = hashlib.sha256()
        with open(path, "wb") as handle:
            for start in range(0, size, len(block)):
                piece = block[: min(len(block), size - start)]
                handle.write(piece)
                digest.update(piece)
        want = digest.hexdigest()
        configs = {"default (no cufile.json)": None,
                   "allow_compat_mode true": CufileConfig(allow_compat_mode=True),
                   "allow_compat_mode false": CufileConfig(allow_compat_mode=False)}
        results = []
        for label, config in configs.items():
            env = {k: v for k, v in os.environ.items() if k != "CUFILE_ENV_PATH_JSON"}
            if config is not None:
                env["CUFILE_ENV_PATH_JSON"] = str(write_cufile_json(Path(tmp) / label.replace(" ", "_") / "cufile.json",
                                                                    config))
            backends = ("kvikio", "torch_gds", "posix")
            for backend in backends:
                if backend == "posix" and config is not None:
                    continue  # cuFile settings do not matter to plain reads
                proc = subprocess.run([sys.executable, __file__, "--child", str(path), backend, want], env=env,
                                      capture_output=True, text=True, timeout=600, check=False)
                line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
                try:
                    result = json.loads(line)
                except ValueError:
                    result = {"backend": backend, "error": f"exit {proc.returncode}: {proc.stderr[-600:]}"}
                result["config"] = label
                results.append(result)
                print(json.dumps(result), flush=True)
    reads = [r[k] for r in results for k in ("cold", "warm") if isinstance(r.get(k), dict)]
    exact = all(read["exact"] for read in reads)
    print(f"{args.size_gib:g} GiB, every completed read byte-exact: {exact}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
