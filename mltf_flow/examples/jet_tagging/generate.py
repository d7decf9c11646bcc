"""Write a deterministic synthetic quark/gluon jet sample as ROOT files (stands in for the real dataset).

Each file holds a TTree ``jets`` with one entry per jet: ``label`` (1 = quark-like, 0 = gluon-like),
``jet_pt``, ``jet_eta`` and jagged constituent branches ``c_pt``, ``c_deta``, ``c_dphi``. Gluon jets
have more constituents, softer fragmentation and a wider angular spread than quark jets (Casimir
scaling, C_A/C_F = 9/4), which is what taggers learn from. Same arguments -> byte-identical arrays.

    python generate.py --out-dir data/jet_sample --n-files 4 --events-per-file 2500 --seed 20241021
"""

from __future__ import annotations

import argparse
from pathlib import Path

import awkward as ak
import numpy as np
import uproot


def make_jets(rng: np.random.Generator, n: int) -> dict[str, object]:
    label = rng.integers(0, 2, size=n).astype(np.int32)
    jet_pt = rng.uniform(200.0, 600.0, size=n)
    jet_eta = rng.uniform(-2.0, 2.0, size=n)
    quark = label == 1
    # Multiplicity grows with the colour factor: gluons radiate ~9/4 as much.
    mult = np.where(quark, rng.poisson(15, size=n), rng.poisson(20, size=n)) + 3
    counts = mult.astype(np.int64)
    total = int(counts.sum())
    # Momentum fractions: a Dirichlet per jet via normalised gammas; a small shape = harder leading particle.
    shape = np.repeat(np.where(quark, 0.7, 0.8), counts)
    gam = rng.gamma(shape, 1.0, size=total)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    sums = np.add.reduceat(gam, offsets[:-1])
    frac = gam / np.repeat(sums, counts)
    c_pt = frac * np.repeat(jet_pt, counts)
    # Angular spread shrinks for harder constituents; gluon jets are wider.
    width = np.repeat(np.where(quark, 0.12, 0.145), counts) / np.sqrt(1.0 + 20.0 * frac)
    c_deta = rng.normal(0.0, 1.0, size=total) * width
    c_dphi = rng.normal(0.0, 1.0, size=total) * width
    return {
        "label": label,
        "jet_pt": jet_pt,
        "jet_eta": jet_eta,
        "c_pt": ak.unflatten(c_pt.astype(np.float32), counts),
        "c_deta": ak.unflatten(c_deta.astype(np.float32), counts),
        "c_dphi": ak.unflatten(c_dphi.astype(np.float32), counts),
    }


def write_sample(out_dir: Path, n_files: int, events_per_file: int, seed: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n_files):
        # One independent stream per file: adding files never changes the existing ones.
        rng = np.random.default_rng([seed, index])
        path = out_dir / f"jets_{index:03d}.root"
        tmp = path.with_suffix(".root.tmp")
        with uproot.recreate(tmp) as handle:
            handle["jets"] = make_jets(rng, events_per_file)
        tmp.replace(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("data/jet_sample"))
    parser.add_argument("--n-files", type=int, default=4)
    parser.add_argument("--events-per-file", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=20241021)
    args = parser.parse_args()
    paths = write_sample(args.out_dir, args.n_files, args.events_per_file, args.seed)
    print(f"wrote {len(paths)} files with {args.events_per_file} jets each to {args.out_dir}")


if __name__ == "__main__":
    main()
