"""The task shapes of dag_scale.py: a Python fan-out of MLflowSteps, and the bare Luigi baselines.

The fan-out's project directory comes from ``$MLTF_BENCH_PROJECT`` (dag_scale.py writes the project into a
temporary directory and sets it for the commands it times).
"""

from __future__ import annotations

import os
from typing import Any

import luigi

from mltf_flow.step import MLflowStep


class Leaf(MLflowStep):
    """One of the fan-out's N steps: the trivial entry point with its own ``i`` (its own key)."""

    project_dir = os.environ.get("MLTF_BENCH_PROJECT", ".")
    entry_point = "noop"
    step = "leaf"
    i = luigi.IntParameter()


class Fan(MLflowStep):
    """Requires N Leaf steps."""

    project_dir = os.environ.get("MLTF_BENCH_PROJECT", ".")
    entry_point = "noop"
    step = "fan"
    n = luigi.IntParameter()
    pass_through = ("n",)

    def requires(self) -> list[Any]:
        return [self.upstream(Leaf, i=k) for k in range(self.n)]


class BareLeaf(luigi.Task):
    i = luigi.IntParameter()

    def complete(self) -> bool:
        return True


class BareFan(luigi.WrapperTask):
    """Complete when its N complete leaves are (Luigi checks each)."""

    n = luigi.IntParameter()

    def requires(self) -> list[Any]:
        return [BareLeaf(i=k) for k in range(self.n)]


class BareChain(luigi.Task):
    """A chain of N tasks, each requiring the previous; complete when every link is (checked iteratively:
    Luigi stops at a complete task, so the root walks the chain as a cached rerun of a chain must)."""

    i = luigi.IntParameter()

    def requires(self) -> Any:
        return BareChain(i=self.i - 1) if self.i > 0 else []

    def complete(self) -> bool:
        task: Any = self
        while isinstance(task, BareChain):
            task = task.requires()
        return True
