"""Entry point ``features``: read the staged ROOT files with uproot and compute per-jet features.

Input: the dataset manifest written by staging (exact files and checksums, in a fixed order).
Output: ``features.npz`` (``X`` float32 [n_jets, n_features], ``y`` int64, ``names``), logged as an
artifact of the MLflow run this process attaches to through ``MLFLOW_RUN_ID``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import awkward as ak
import mlflow
import numpy as np
import uproot

FEATURES = ("n_constituents", "log_jet_pt", "girth", "pt_d", "leading_fraction", "width_eta")


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--min-constituent-pt", type=float, default=1.0)
    parser.add_argument("--max-constituents", type=int, default=64)
    args = parser.parse_args()

    manifest = json.loads(args.manifest.read_text())
    files = sorted(manifest["files"], key=lambda f: f["name"])
    xs, ys = [], []
    with mlflow.start_run():
        for entry in files:
            with uproot.open(entry["path"]) as handle:
                arrays = handle["jets"].arrays(["label", "jet_pt", "c_pt", "c_deta", "c_dphi"])
            xs.append(jet_features(arrays, args.min_constituent_pt, args.max_constituents))
            ys.append(ak.to_numpy(arrays["label"]).astype(np.int64))
            print(f"{entry['name']}: {len(arrays)} jets")
        x, y = np.concatenate(xs), np.concatenate(ys)
        mlflow.log_metrics({"n_jets": float(len(y)), "n_files": float(len(files)), "quark_fraction": float(y.mean())})
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "features.npz"
            np.savez(out, X=x, y=y, names=np.array(FEATURES))
            mlflow.log_artifact(str(out))
        print(f"features: {x.shape[0]} jets x {x.shape[1]} features ({', '.join(FEATURES)})")


if __name__ == "__main__":
    main()
