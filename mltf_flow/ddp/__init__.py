"""Distributed data-parallel training across Dask workers, torchrun-compatible.

* :mod:`mltf_flow.ddp.plan`: which worker runs which rank, and the torchrun environment of each;
* :mod:`mltf_flow.ddp.launcher`: runs a step's command once per rank on the cluster's workers, stops
  every rank when one fails, and reports each rank's status;
* :mod:`mltf_flow.ddp.step`: :class:`~mltf_flow.ddp.step.DDPStep`, a pipeline step trained that way;
* :mod:`mltf_flow.ddp.monitor`: per-rank system metrics (own GPU only) into the step's MLflow run;
* :mod:`mltf_flow.ddp.rank`: helpers for training scripts (re-exported here; importing this package
  imports neither torch nor dask).
"""

from mltf_flow.ddp.rank import (
    destroy_process_group,
    init_process_group,
    is_rank_zero,
    local_rank,
    rank,
    rank_zero_only,
    world_size,
)

__all__ = [
    "destroy_process_group", "init_process_group", "is_rank_zero", "local_rank", "rank", "rank_zero_only",
    "world_size",
]
