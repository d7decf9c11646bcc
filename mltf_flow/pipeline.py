"""Generic multi-step pipelines declared in ``pipeline.yaml`` next to ``MLproject`` (no Python needed).

The file is a sidecar: MLflow ignores it, so ``mlflow run`` keeps working on the same project::

    name: jet_tagging                   # pipeline (experiment) name; default: MLproject name
    steps:
      stage:
        dataset: data/jet_sample        # a stage step: path, file:// or rucio:// URI
      features:
        entry_point: features
        inputs: {manifest: stage}       # parameter <- step (a stage step gives its manifest path)
        outputs: {features: features.mltft}
        code: [features.py]             # the files its key covers (default: auto = the project's code,
                                        # never its outputs; paths, globs, !glob: mltf_flow.code_set)
      train:
        entry_point: train
        inputs: {features: features.features}     # parameter <- step.output
        outputs: {model: "model:jet_tagger"}
        requires: []                    # extra ordering-only dependencies
        gpu: true                       # use the profile's gpu_profile
        run_on: ddp                     # driver (default) | worker: one task on a cluster worker |
                                        # ddp: one process per rank on the workers (torchrun variables)
        world_size: 2                   # ddp only; default: every worker of the profile

The file's types and every check the file alone decides are :mod:`mltf_flow.config.pipeline`; this module
reads it (remembered across invocations: a cached rerun does not validate it again), checks the entry points
against ``MLproject`` and makes the Luigi tasks.

A project without ``pipeline.yaml`` is a pipeline of independent single steps, one per entry point
(and any ``.py``/``.sh`` script), so every project ``mlflow run`` accepts runs here too.

From the command line: ``mltf-flow run DIR --step train -P epochs=3 -P features.max_constituents=32``,
or with Luigi: ``luigi --module mltf_flow.pipeline PipelineStep --project-dir DIR --run-step train
--overrides '{"epochs": 3}'``. Unscoped parameters apply to the requested step; ``STEP.PARAM`` to any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import luigi

from mltf_flow.config.files import stamp
from mltf_flow.config.memo import remembered
from mltf_flow.config.pipeline import PipelineFile, StepSpec, read_pipeline_file
from mltf_flow.config.tune import StudyEntry
from mltf_flow.errors import ConfigError
from mltf_flow.input_check import input_errors
from mltf_flow.invocation import shared_per_invocation
from mltf_flow.mlproject import Project, read_project
from mltf_flow.redaction import is_secret_name, shown_value
from mltf_flow.staging.step import StageStep
from mltf_flow.step import MLflowStep
from mltf_flow.step_def import StepDefinition

PIPELINE_FILE = "pipeline.yaml"


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    root: Path
    steps: dict[str, StepSpec]
    declared: bool  # False: synthesised from MLproject (no pipeline.yaml)
    #: Its hyperparameter studies (``studies:``), by name.
    studies: Mapping[str, StudyEntry] = field(default_factory=dict)

    def study(self, name: str) -> StudyEntry:
        if name in self.studies:
            return self.studies[name]
        raise ConfigError(f"{self.root / PIPELINE_FILE}: no study {name!r}; studies are: "
                          f"{', '.join(self.studies) or 'none (add a studies: section, see docs/hpo.md)'}.")

    def step(self, name: str) -> StepSpec:
        if name in self.steps:
            return self.steps[name]
        if not self.declared:
            read_project(self.root).entry_point(name)  # raises ConfigError listing entry points
            return StepSpec(name=name, entry_point=name)
        raise ConfigError(
            f"{self.root / PIPELINE_FILE}: no step {name!r}; steps are: {', '.join(self.steps)}."
        )


def load_pipeline(project_dir: str | Path) -> PipelineSpec:
    """Read and validate ``pipeline.yaml`` of a project (or synthesise single steps without one).

    The checked file is remembered by its contents (:mod:`mltf_flow.config.memo`), so a cached rerun
    does not validate it again; what needs the project (its entry points) is checked once per invocation
    (and again when MLproject or the file changes)."""
    project = read_project(project_dir)
    path = project.root / PIPELINE_FILE
    # Once per invocation: every step object and every requires() of a 1,000-step DAG asks (an edited file
    # has another stamp and is read again).
    return shared_per_invocation("pipeline", project.root, (project, stamp(path)), lambda: _load(project, path))


def _load(project: Project, path: Path) -> PipelineSpec:
    if not path.is_file():
        singles = {name: StepSpec(name=name, entry_point=name) for name in project.entry_points}
        return PipelineSpec(project.name, project.root, singles, declared=False)
    document: PipelineFile = remembered("pipeline", [path], (), lambda: read_pipeline_file(path))
    steps = document.specs()
    _check_entry_points(steps, project, path)
    return PipelineSpec(document.name or project.name, project.root, steps, declared=True,
                        studies=dict(document.studies))


def _check_entry_points(steps: Mapping[str, StepSpec], project: Project, path: Path) -> None:
    for spec in steps.values():
        if spec.entry_point is None:
            continue
        try:
            project.entry_point(spec.entry_point)
        except ConfigError as exc:
            raise ConfigError(f"{path}: step {spec.name!r}, key 'entry_point': {exc}") from None


def scoped_overrides(overrides: Mapping[str, Any], step: str, target: str, steps: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides that apply to ``step``: ``step.param`` keys, and unscoped keys when it is ``target``."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        prefix, dot, rest = key.partition(".")
        if dot and prefix in steps:
            if prefix == step:
                out[rest] = value
        elif step == target:
            out[key] = value
    return out


class OverridesParameter(luigi.DictParameter):
    """``--overrides``: parsed by Luigi as JSON, but shown (task repr, task id, summary, ERROR lines, the
    scheduler) with secret-looking values masked and URL credentials stripped
    (:func:`mltf_flow.redaction.shown_value`). Secrets stay out of a task's identity as they stay out of its
    cache key; the step itself gets the real values."""

    def serialize(self, x: Any) -> str:
        shown = {k: shown_value(k.rpartition(".")[2], v) if isinstance(v, str) or is_secret_name(k) else v
                 for k, v in dict(x).items()}
        return str(super().serialize(shown))  # type: ignore[no-untyped-call]


def make_task(
    project_dir: str, step: str, overrides: Mapping[str, Any], allow_extra: bool = False,
    pipeline_profile: str | None = None, profile: str | None = None, env_manager: str | None = None,
    spec: PipelineSpec | None = None, from_study: str | None = None,
) -> luigi.Task:
    """The Luigi task for ``step`` of the pipeline in ``project_dir`` (``spec``: its pipeline, when read)."""
    spec = spec or load_pipeline(project_dir)
    step_spec = spec.step(step)
    if step_spec.is_stage:
        mine = scoped_overrides(overrides, step, step, spec.steps)
        unknown = set(mine) - {"dataset"}
        if unknown:
            raise ConfigError(f"stage step {step!r} takes only 'dataset', not {sorted(unknown)}.")
        return StageStep(dataset=str(mine.get("dataset", step_spec.dataset)), profile=profile,
                         pipeline_profile=pipeline_profile, pipeline=spec.name)
    return PipelineStep(
        project_dir=str(spec.root), run_step=step, overrides=dict(overrides), allow_extra=allow_extra,
        pipeline_profile=pipeline_profile, profile=profile, env_manager=env_manager, from_study=from_study,
    )


class PipelineStep(MLflowStep):
    """One step of a ``pipeline.yaml`` pipeline (or a single entry point of any MLflow project)."""

    project_dir: str = luigi.Parameter(  # type: ignore[misc]  # a parameter here, a class constant in MLflowStep
        description="directory holding MLproject (and pipeline.yaml)"
    )
    run_step: str = luigi.Parameter(description="step to run (with everything it needs)")
    overrides: dict[str, Any] = OverridesParameter(
        default={}, description='parameter values: {"param": v} for this step, {"step.param": v} for any'
    )
    allow_extra: bool = luigi.BoolParameter(default=False, description="pass unknown params as --key value")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with input_errors():  # `luigi --module ... PipelineStep --run-step nosuch`: one line, exit code 2
            self.spec = load_pipeline(self.project_dir)
            if self.spec.step(self.run_step).is_stage:
                raise ConfigError(f"step {self.run_step!r} is a stage step: run it through the step that uses it.")

    def definition(self) -> StepDefinition:
        """The step as ``pipeline.yaml`` declares it (the same value a Python MLflowStep would give)."""
        if "definition" not in self._memo:
            step = self.spec.step(self.run_step)
            assert step.entry_point is not None  # not a stage step: checked in __init__
            self._memo["definition"] = StepDefinition(
                project_dir=self.spec.root, entry_point=step.entry_point, name=step.name, pipeline=self.spec.name,
                code_paths=step.code, outputs=step.outputs, inputs=step.inputs,
                allow_extra_params=bool(self.allow_extra), needs_gpu=step.gpu, run_on=step.run_on,
                default_world_size=step.world_size, timeout=step.timeout,
                timeout_source=f"{self.spec.root / PIPELINE_FILE}: step {step.name!r}, key 'timeout'",
            )
        definition: StepDefinition = self._memo["definition"]
        return definition

    def given_params(self) -> dict[str, Any]:
        return scoped_overrides(self.overrides, self.run_step, self.run_step, self.spec.steps)

    def requires(self) -> dict[str, luigi.Task]:
        step = self.spec.step(self.run_step)
        inherited = self.profile or self.pipeline_profile
        return {
            dep: make_task(self.project_dir, dep, self._upstream_overrides(), self.allow_extra, inherited,
                           env_manager=self.env_manager, spec=self.spec)
            for dep in step.dependencies()
        }

    def _upstream_overrides(self) -> dict[str, Any]:
        # Unscoped keys belong to this step only; upstream steps get the scoped ones.
        return {k: v for k, v in self.overrides.items() if k.partition(".")[0] in self.spec.steps}


__all__ = ["OverridesParameter", "PipelineSpec", "PipelineStep", "StepSpec", "load_pipeline", "make_task",
           "scoped_overrides"]
