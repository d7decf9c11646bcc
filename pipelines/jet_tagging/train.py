"""Entry point ``train``: a small PyTorch quark/gluon classifier on the extracted features.

Deterministic on CPU: every random choice comes from generators seeded by ``--seed``, one intra-op
thread, deterministic algorithms. Logs per-epoch ``train_loss``, ``val_loss``, ``val_accuracy``, the
model (LoggedModel ``jet_tagger`` with signature and explicit pip requirements), ``metrics.json`` and
the sha256 of the weights (tag ``weights_sha256``) so reproducibility can be checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from torch import nn


def weights_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # reductions split over threads can round differently
    torch.use_deterministic_algorithms(True)
    data = np.load(args.features)
    x_all, y_all = data["X"].astype(np.float32), data["y"].astype(np.int64)
    order = np.random.default_rng(args.seed).permutation(len(y_all))
    n_val = len(y_all) // 5
    val, tr = order[:n_val], order[n_val:]
    mean, std = x_all[tr].mean(axis=0), x_all[tr].std(axis=0) + 1e-6
    x = torch.from_numpy((x_all - mean) / std)
    y = torch.from_numpy(y_all)

    model = nn.Sequential(
        nn.Linear(x.shape[1], args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden), nn.ReLU(),
        nn.Linear(args.hidden, 2),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(args.seed)
    tr_t, val_t = torch.from_numpy(tr), torch.from_numpy(val)

    with mlflow.start_run():
        mlflow.log_params({"n_train": len(tr), "n_val": len(val), "n_features": int(x.shape[1])})
        for epoch in range(args.epochs):
            model.train()
            perm = tr_t[torch.randperm(len(tr_t), generator=shuffle)]
            total = 0.0
            for start in range(0, len(perm), args.batch_size):
                idx = perm[start : start + args.batch_size]
                optimiser.zero_grad()
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimiser.step()
                total += loss.item() * len(idx)
            model.eval()
            with torch.no_grad():
                logits = model(x[val_t])
                val_loss = float(loss_fn(logits, y[val_t]))
                val_acc = float((logits.argmax(dim=1) == y[val_t]).float().mean())
            mlflow.log_metrics(
                {"train_loss": total / len(perm), "val_loss": val_loss, "val_accuracy": val_acc}, step=epoch
            )
            print(f"epoch {epoch + 1}/{args.epochs}: train_loss={total / len(perm):.4f} "
                  f"val_loss={val_loss:.4f} val_accuracy={val_acc:.4f}")

        digest = weights_sha256(model)
        mlflow.set_tag("weights_sha256", digest)
        example = ((x_all[val[:8]] - mean) / std).astype(np.float32)
        with torch.no_grad():
            signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
        mlflow.pytorch.log_model(
            model,
            name="jet_tagger",
            signature=signature,
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "metrics.json"
            out.write_text(json.dumps(
                {"val_accuracy": val_acc, "val_loss": val_loss, "weights_sha256": digest,
                 "feature_mean": mean.tolist(), "feature_std": std.tolist()}, indent=1))
            mlflow.log_artifact(str(out))
        print(f"final val_accuracy={val_acc:.4f}, weights sha256 {digest}")


if __name__ == "__main__":
    main()
