"""DDPStep: a pipeline step whose entry point trains as a torchrun-style job on the profile's GPU workers.

::

    class Train(DDPStep):
        project_dir = HERE / "jet_tagging"
        entry_point = "train"
        ...

    luigi --module pipelines Train --profile mltf-a6000              # ranks = jobs x GPUs per job
    luigi --module pipelines Train --profile mltf-a6000 --world-size 2

The world size is part of the cache key (the global batch grows with it, so the weights differ); the
cluster is waited for until exactly the workers of the profile are there (no ``adapt()``).
"""

from __future__ import annotations

from typing import ClassVar

import luigi

from mltf_flow.step import MLflowStep


class DDPStep(MLflowStep):
    """An MLflowStep launched once per rank (see the module docstring)."""

    needs_gpu: ClassVar[bool] = True
    run_on: ClassVar[str] = "ddp"

    world_size: int | None = luigi.OptionalIntParameter(
        default=None, description="ranks of the training job (default: the profile's jobs x GPUs per job)"
    )


__all__ = ["DDPStep"]
