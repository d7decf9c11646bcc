"""The Luigi root task of tests/integration/test_step_timeout.py: several steps of the ``timeout`` project
in one invocation (one interpreter start, one tracking store, one cluster), each ending its own way."""

from __future__ import annotations

import json

import luigi

from mltf_flow.pipeline import make_task


class TimeoutCases(luigi.WrapperTask):
    """Requires ``make_task(project_dir, step, overrides, profile=profile)`` for each ``[step, profile,
    overrides]`` of ``cases`` (JSON)."""

    project_dir: str = luigi.Parameter()
    cases: str = luigi.Parameter()

    def requires(self) -> list[luigi.Task]:
        return [make_task(self.project_dir, step, overrides, profile=profile)
                for step, profile, overrides in json.loads(self.cases)]
