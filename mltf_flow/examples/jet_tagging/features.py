"""Entry point ``features``: read the staged ROOT files with uproot and compute per-jet features.

Input: the dataset manifest written by staging (exact files and checksums, in a fixed order). With
``DASK_SCHEDULER_ADDRESS`` set (mltf_flow sets it), files are processed in parallel on the cluster.
Output: ``features.mltft``, an aligned tensor file (``X`` float32 [n_jets, n_features], ``y`` int64, the
feature names in its metadata; for ``train_fsdp``'s transformer also the constituents themselves, ``C``
float32 [n_jets, max_constituents, 3] (log pt fraction, delta eta, delta phi; zero-padded) and ``n_c``
int64 [n_jets] (how many rows of ``C`` are real); ``train`` reads only ``X`` and ``y``; 4 KiB-aligned
arrays that GPUDirect Storage reads straight into GPU memory, see ``mltf_flow.fabric.tensorfile``), logged
as an artifact of the MLflow run this process attaches to through ``MLFLOW_RUN_ID``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import awkward as ak
import mlflow
import numpy as np
import uproot

from mltf_flow.fabric.tensorfile import write_tensor_file

FEATURES = ("n_constituents", "log_jet_pt", "girth", "pt_d", "leading_fraction", "width_eta")
CONSTITUENT_FEATURES = ("log_pt_fraction", "deta", "dphi")


def jet_features(arrays: ak.Array, min_pt: float, max_constituents: int) -> np.ndarray:
    keep = arrays["c_pt"] > min_pt
    pt = arrays["c_pt"][keep][:, :max_constituents]
    deta = arrays["c_deta"][keep][:, :max_constituents]
    dphi = arrays["c_dphi"][keep][:, :max_constituents]
    sum_pt = ak.sum(pt, axis=1)
    safe = ak.where(sum_pt > 0, sum_pt, 1.0)
    dr = np.sqrt(deta**2 + dphi**2)
    columns = [
        ak.num(pt, axis=1),
        np.log(arrays["jet_pt"]),
        ak.sum(pt * dr, axis=1) / safe,
        np.sqrt(ak.sum(pt**2, axis=1)) / safe,
        ak.fill_none(ak.max(pt, axis=1), 0.0) / safe,
        np.sqrt(ak.sum(pt * deta**2, axis=1) / safe),
    ]
    return np.stack([ak.to_numpy(c).astype(np.float32) for c in columns], axis=1)


def constituents(arrays: ak.Array, min_pt: float, max_constituents: int) -> tuple[np.ndarray, np.ndarray]:
    """The kept constituents as a zero-padded [n_jets, max_constituents, 3] array, and how many each jet has."""
    keep = arrays["c_pt"] > min_pt
    pt = arrays["c_pt"][keep][:, :max_constituents]
    columns = [np.log(pt / arrays["jet_pt"]), arrays["c_deta"][keep][:, :max_constituents],
               arrays["c_dphi"][keep][:, :max_constituents]]
    padded = [ak.to_numpy(ak.fill_none(ak.pad_none(c, max_constituents, axis=1, clip=True), 0.0)) for c in columns]
    return np.stack(padded, axis=2).astype(np.float32), ak.to_numpy(ak.num(pt, axis=1)).astype(np.int64)


def process_file(path: str, min_pt: float, max_constituents: int) -> tuple[np.ndarray, ...]:
    """Features, labels, constituents and their counts of one ROOT file (one Dask task per file when a cluster
    is available)."""
    with uproot.open(path) as handle:
        arrays = handle["jets"].arrays(["label", "jet_pt", "c_pt", "c_deta", "c_dphi"])
    return (jet_features(arrays, min_pt, max_constituents), ak.to_numpy(arrays["label"]).astype(np.int64),
            *constituents(arrays, min_pt, max_constituents))


def extract(paths: list[str], min_pt: float, max_constituents: int) -> list[tuple[np.ndarray, ...]]:
    """Process every file, on the Dask cluster in DASK_SCHEDULER_ADDRESS if there is one; results come
    back in file order, so the merged output does not depend on which worker finished first."""
    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        return [process_file(p, min_pt, max_constituents) for p in paths]
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        futures = client.map(process_file, paths, min_pt=min_pt, max_constituents=max_constituents,
                             key=[f"jet-features-{i}-{os.path.basename(p)}" for i, p in enumerate(paths)])
        return list(client.gather(futures))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--min-constituent-pt", type=float, default=1.0)
    parser.add_argument("--max-constituents", type=int, default=64)
    args = parser.parse_args()

    manifest = json.loads(args.manifest.read_text())
    files = sorted(manifest["files"], key=lambda f: f["name"])
    with mlflow.start_run():
        results = extract([f["path"] for f in files], args.min_constituent_pt, args.max_constituents)
        for entry, result in zip(files, results, strict=True):
            print(f"{entry['name']}: {len(result[1])} jets")
        x = np.concatenate([r[0] for r in results])
        y = np.concatenate([r[1] for r in results])
        mlflow.log_metrics({"n_jets": float(len(y)), "n_files": float(len(files)), "quark_fraction": float(y.mean())})
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "features.mltft"
            write_tensor_file(out, {"X": x.astype(np.float32), "y": y.astype(np.int64),
                                    "C": np.concatenate([r[2] for r in results]),
                                    "n_c": np.concatenate([r[3] for r in results])},
                              meta={"features": list(FEATURES), "constituent_features": list(CONSTITUENT_FEATURES),
                                    "files": [f["name"] for f in files]})
            mlflow.log_artifact(str(out))
        print(f"features: {x.shape[0]} jets x {x.shape[1]} features ({', '.join(FEATURES)})")


if __name__ == "__main__":
    main()
