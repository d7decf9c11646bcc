"""TuneStep: a hyperparameter study of a step, as one cached Luigi task (its trials are not Luigi tasks).

Mix it in front of the step to tune; the step's own parameters are the study's fixed values::

    class Tune(TuneStep, Train):
        search_space = PROJECT / "space.yaml"
        objective = "val_accuracy"          # a metric the entry point logs (per epoch, for pruning)

    luigi --module pipelines Tune --n-trials 50 --epochs 4 --local-scheduler
    luigi --module pipelines Train --from-study jet_tagging.train.3f2a...   # the best trial's run: cached

The task's key is the study's (:class:`mltf_flow.tune.spec.StudySpec`): a finished study with the same key is
complete, so the same command again runs nothing. It requires what the tuned step requires (staged data,
features: computed once for every trial). Running it is :func:`mltf_flow.tune.study.run_study`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import luigi

from mltf_flow.described import drop_missing, run_ended
from mltf_flow.errors import StepError
from mltf_flow.pipeline import PipelineStep
from mltf_flow.step import _OWN_PARAMS, MLflowStep

#: Luigi parameters of a study (never the tuned entry point's).
TUNE_PARAMS = ("n_trials", "space", "metric", "direction", "sampler", "pruner", "sampler_seed", "n_jobs",
               "study_name")


class TuneStep(MLflowStep):
    """A study of the step it is mixed into (see the module docstring)."""

    #: The search space: a YAML file (relative paths: to the project directory) or its mapping.
    search_space: ClassVar[str | os.PathLike[str] | dict[str, Any] | None] = None
    #: The metric to optimise (what the entry point logs), and its direction.
    objective: ClassVar[str | None] = None
    objective_direction: ClassVar[str] = "maximize"
    #: The entry point's defaults are trial 0 (the baseline the study has to beat).
    include_defaults: ClassVar[bool] = True
    #: A study's trials train on one rank each by default: as many at once as the profile has workers.
    default_world_size: ClassVar[int | None] = 1

    n_trials: int = luigi.IntParameter(default=20, description="trials the study runs (complete, pruned or failed)")
    space: str | None = luigi.OptionalParameter(
        default=None, description="search space YAML (default: the step's search_space)")
    metric: str | None = luigi.OptionalParameter(default=None, description="metric to optimise (default: objective)")
    direction: str | None = luigi.OptionalParameter(default=None, description="maximize | minimize")
    sampler: str = luigi.Parameter(default="tpe", description="tpe | random | cmaes | gp | qmc")
    pruner: str = luigi.Parameter(default="median",
                                  description="none | median | percentile | hyperband | successive_halving")
    sampler_seed: int | None = luigi.OptionalIntParameter(default=None, description="the sampler's seed")
    n_jobs: int | None = luigi.OptionalIntParameter(
        default=None, significant=False, description="trials at once (default: the profile's workers / world size)")
    study_name: str | None = luigi.OptionalParameter(default=None, description="name of the Optuna study "
                                                     "(default: derived from what it searches)")

    @classmethod
    def own_params(cls) -> tuple[str, ...]:
        return _OWN_PARAMS + TUNE_PARAMS

    def study_spec(self) -> Any:
        """The study's settings and checked space (mltf_flow.tune.spec.StudySpec), read once."""
        if "study_spec" not in self._memo:
            from mltf_flow.config.schema import validate
            from mltf_flow.config.tune import StudyEntry
            from mltf_flow.tune.resolve import study_spec

            where = f"{type(self).__name__}"
            entry = validate(StudyEntry, {
                "step": self.step_name(), "metric": self.metric or self.objective or "",
                "space": self._space_value(), "direction": self.direction or self.objective_direction,
                "n_trials": self.n_trials, "sampler": self.sampler, "pruner": self.pruner, "seed": self.sampler_seed,
                "include_defaults": self.baseline(), "n_jobs": self.n_jobs,
            }, where)
            self._memo["study_spec"] = study_spec(entry, self.definition(), self.entry(), where=where,
                                                  name=self.study_name)
        return self._memo["study_spec"]

    def baseline(self) -> bool:
        """Whether the entry point's defaults are trial 0."""
        return self.include_defaults

    def _space_value(self) -> str | dict[str, Any]:
        value = self.space if self.space is not None else self.search_space
        if value is None:
            return ""
        if isinstance(value, dict):
            return value
        text = str(value)
        if text.lstrip().startswith("{"):
            parsed: dict[str, Any] = json.loads(text)  # the inline space of a pipeline.yaml study
            return parsed
        path = Path(text)
        return str(path if path.is_absolute() else Path(self.definition().project_dir) / path)

    def cache_key(self) -> str | None:
        """The study's key (None while an upstream result is missing)."""
        base = self.describe()
        return None if base is None else str(self.study_spec().key(base))

    def check_input(self) -> list[luigi.Task]:
        deps = super().check_input()
        spec = self.study_spec()
        if spec.include_defaults:
            spec.space.defaults_point(self.params())  # the baseline trial must be a point Optuna can record
        if spec.sampler in ("cmaes", "gp", "qmc"):  # samplers that need another package: a missing one is said now
            from mltf_flow.tune.spec import make_sampler

            make_sampler(spec)
        return deps

    def _stale_project_files(self) -> bool:
        return False  # trials run at once in one project directory: files they write there are not tracked

    def run(self) -> None:
        from mltf_flow.tune.study import run_study

        drop_missing(self._memo)
        base = self.describe()
        if base is None:
            raise StepError(f"study of step '{self.step_name()}' cannot run: an upstream result is missing.",
                            step=self.step_name())
        try:
            run_study(base, self.study_spec(), self.requirements(), settings=self.settings(), task_id=self.task_id,
                      reporter=self)
        finally:
            self.forget_key()
            run_ended()


class PipelineTune(TuneStep, PipelineStep):
    """A study of a step of a ``pipeline.yaml`` pipeline (or of any MLflow project's entry point):
    ``mltf-flow tune`` builds it (mltf_flow.tune.commands)."""

    world_size: int = luigi.IntParameter(default=1, description="ranks of each trial of a ddp step")
    include_baseline: bool = luigi.BoolParameter(default=True, description="the entry point's defaults are trial 0")

    @classmethod
    def own_params(cls) -> tuple[str, ...]:
        return (*super().own_params(), "include_baseline")

    def baseline(self) -> bool:
        return bool(self.include_baseline)


__all__ = ["TUNE_PARAMS", "PipelineTune", "TuneStep"]
