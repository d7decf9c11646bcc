"""What every DDP step run must hold, whatever the cluster: checked on LocalCluster and on SLURM."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.integration.mlflow_queries import client

_DIGEST = re.compile(r"rank (\d+)\b.*final weights sha256 ([0-9a-f]{64})")


def rank_logs(uri: str, run: Any, tmp_path: Path) -> dict[int, str]:
    """The step log (rank 0) and the other ranks' logs, as the run keeps them."""
    import mlflow.artifacts

    world = int(run.data.tags["mltf.ddp.world_size"])
    logs = {}
    for rank in range(world):
        name = "mltf/step.log" if rank == 0 else f"mltf/rank{rank}.log"
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name,
                                                    dst_path=str(tmp_path / f"logs-{rank}"), tracking_uri=uri)
        logs[rank] = Path(local).read_text()
    return logs


def final_digests(logs: dict[int, str]) -> dict[int, str]:
    """Each rank's own report of its final weights (rank -> sha256)."""
    found = {}
    for rank, text in logs.items():
        matches = [m for m in _DIGEST.finditer(text) if int(m.group(1)) == rank]
        assert matches, f"rank {rank} did not report its weights:\n{text[-2000:]}"
        found[rank] = matches[-1].group(2)
    return found


def assert_ddp_run(uri: str, run: Any, tmp_path: Path, world: int = 2) -> str:
    """Identical final weights on every rank, training metrics from rank 0, system metrics from every
    rank; returns the common weights digest."""
    tags = run.data.tags
    assert tags["mltf.ddp.world_size"] == str(world)
    placement = json.loads(tags["mltf.ddp.ranks"])
    assert [p["rank"] for p in placement] == list(range(world))
    digests = final_digests(rank_logs(uri, run, tmp_path))
    assert len(digests) == world and len(set(digests.values())) == 1, digests
    metrics = run.data.metrics
    for rank in range(world):
        assert f"system/rank-{rank}/cpu_utilization_percentage" in metrics, sorted(metrics)
        assert f"system/rank-{rank}/system_memory_usage_megabytes" in metrics
    assert not any(k.startswith("system/") and "/rank-" not in k for k in metrics), "a monitor without node id"
    return next(iter(digests.values()))


def metric_steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client(uri).get_metric_history(run_id, key))
