"""``pipeline.yaml`` as types: the document (:class:`PipelineFile`) and its steps (:class:`StepEntry`).

What a step's keys mean is in :mod:`mltf_flow.pipeline` (the Luigi front end that reads the file). Everything
the file alone decides is checked here, with the other configuration types (:mod:`mltf_flow.config.schema`):
each key's type, a step being either an entry point or a dataset, a valid dataset URI, inputs naming
declared steps and outputs, no cycles. What needs the project (an entry point exists in ``MLproject``) is
checked by the front end. :func:`read_pipeline_file` is what the front end remembers across invocations
(:mod:`mltf_flow.config.memo`): a cached rerun reads it without importing pydantic.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml

from mltf_flow.config.fields import Before, Ge, StrictBool, StrictInt, StrictStr
from mltf_flow.config.files import load_yaml, yaml_problem
from mltf_flow.config.schema import Schema, validate
from mltf_flow.config.tune import StudyEntry
from mltf_flow.config.units import TIMEOUT_HINT, Timeout
from mltf_flow.errors import ConfigError
from mltf_flow.staging.uri import parse_dataset_uri

#: Where a step's command runs: on this machine ("driver"), as one task on a cluster worker ("worker"),
#: once per rank on the workers with the torchrun variables ("ddp", mltf_flow.ddp).
Launcher = Literal["driver", "worker", "ddp"]
LAUNCHERS: tuple[str, ...] = typing.get_args(Launcher)
_STEPS_SHAPE = "step name -> entry_point/dataset, inputs, outputs"


def _named(value: Any) -> Any:
    """``inputs``/``outputs``: names and values as text (YAML reads ``3`` or ``true`` as other types)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return value  # refused by the type, with the expected shape
    return {str(k): str(v) if isinstance(v, str | int | float) else v for k, v in value.items()}


def _code(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


def _steps(value: Any) -> Any:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"needs a 'steps' mapping ({_STEPS_SHAPE}), found {value!r}.")
    return {str(name): step for name, step in value.items()}


Named = Annotated[dict[StrictStr, StrictStr], Before(_named)]


@dataclass(frozen=True, kw_only=True)
class StepEntry(Schema):
    """One entry of ``steps:``: an MLproject entry point (or script), or a stage step (``dataset``)."""

    entry: ClassVar[str] = "step"
    shape: ClassVar[str] = "entry_point: ..., inputs: {...}, outputs: {...}; or dataset: ..."
    expect: ClassVar[dict[str, str]] = {
        "entry_point": "an entry point of MLproject or a .py/.sh script",
        "dataset": "a path, file:// or rucio:// URI", "inputs": "a mapping of parameter: step or step.output",
        "outputs": "a mapping of output name: path or model:NAME", "code": "'auto' or a list of paths/globs",
        "requires": "a list of step names",
        "run_on": "'driver', 'worker' or 'ddp'", "world_size": "a whole number >= 1",
        "timeout": f"{TIMEOUT_HINT}, or null",
    }

    entry_point: StrictStr | None = None  # None for a stage step
    dataset: StrictStr | None = None
    inputs: Named = field(default_factory=dict)
    outputs: Named = field(default_factory=dict)
    code: Annotated[tuple[StrictStr, ...], Before(_code)] = ("auto",)
    requires: tuple[StrictStr, ...] = ()
    gpu: StrictBool = False
    run_on: Launcher = "driver"
    world_size: Annotated[StrictInt, Ge(1)] | None = None
    #: Seconds the step's command may run (wins over the profile's ``timeout``); None: the profile's.
    timeout: Timeout | None = None

    def __post_init__(self) -> None:
        # Runs after each key was checked; a ValueError here is reported for the whole step.
        if (self.entry_point is None) == (self.dataset is None):
            raise ValueError("give either 'entry_point' (an MLproject step) or 'dataset' (a stage step).")
        if self.world_size is not None and self.run_on != "ddp":
            raise ValueError(f"world_size is for steps with run_on: ddp (this one runs on {self.run_on!r}); "
                             "set run_on: ddp or remove world_size.")
        if self.dataset is not None and self.timeout is not None:
            raise ValueError("a stage step runs no command: remove timeout (or put it on the step that uses it).")
        if self.dataset is not None:
            parse_dataset_uri(self.dataset)  # a ConfigError (a ValueError) that says what is wrong
            if self.inputs or self.outputs:
                raise ValueError("a stage step has no inputs or outputs (its output is the manifest).")

    @property
    def is_stage(self) -> bool:
        return self.entry_point is None

    def dependencies(self) -> list[str]:
        """The steps this one needs: those its inputs come from, then those it ``requires``."""
        deps = [src.partition(".")[0] for src in self.inputs.values()] + list(self.requires)
        return list(dict.fromkeys(deps))


@dataclass(frozen=True, kw_only=True)
class StepSpec(StepEntry):
    """A step with its name (its key in ``steps:``, or an entry point of a project without the file)."""

    name: str


@dataclass(frozen=True, kw_only=True)
class PipelineFile(Schema):
    """The ``pipeline.yaml`` document: the pipeline's name and its steps, in the file's order."""

    joiner: ClassVar[str] = ": "
    expect: ClassVar[dict[str, str]] = {"name": "a string (the pipeline's name; default: MLproject's)"}

    name: StrictStr | None = None
    steps: Annotated[dict[str, StepEntry], Before(_steps)] = field(default_factory=dict)
    #: Hyperparameter studies of its steps (``mltf-flow tune DIR --study NAME``; mltf_flow.config.tune).
    studies: dict[str, StudyEntry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError(f"needs a 'steps' mapping ({_STEPS_SHAPE}).")
        for name, step in self.steps.items():
            self._check_references(name, step)
        _check_acyclic(self.steps)
        for name, study in self.studies.items():
            target = self.steps.get(study.step)
            if target is None or target.is_stage:
                runnable = [n for n, s in self.steps.items() if not s.is_stage]
                raise ValueError(f"study {name!r} tunes step {study.step!r}, which is not a step with an entry point "
                                 f"here (those are: {', '.join(runnable)}).")

    def _check_references(self, name: str, step: StepEntry) -> None:
        for param, source in step.inputs.items():
            dep, _, output = source.partition(".")
            if dep not in self.steps:
                raise ValueError(f"step {name!r} input {param!r} names unknown step {dep!r}; steps are: "
                                 f"{', '.join(self.steps)}.")
            if output and output not in self.steps[dep].outputs:
                raise ValueError(f"step {name!r} input {param!r} wants output {output!r} of {dep!r}, which "
                                 f"declares {sorted(self.steps[dep].outputs) or 'no outputs'}.")
        for dep in step.requires:
            if dep not in self.steps:
                raise ValueError(f"step {name!r} requires unknown step {dep!r}; steps are: {', '.join(self.steps)}.")

    def specs(self) -> dict[str, StepSpec]:
        """The steps with their names."""
        return {name: StepSpec(name=name, **{f.name: getattr(step, f.name) for f in fields(StepEntry)})
                for name, step in self.steps.items()}


def _check_acyclic(steps: Mapping[str, StepEntry]) -> None:
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"steps form a cycle: {' -> '.join([*trail, name])}. Remove one of its "
                             "'inputs' or 'requires'.")
        state[name] = 1
        for dep in steps[name].dependencies():
            visit(dep, [*trail, name])
        state[name] = 2

    for name in steps:
        visit(name, [])


def read_pipeline_file(path: Path) -> PipelineFile:
    """``path`` read and checked (see the module docstring); a ConfigError names the file and the key."""
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}. Fix the file (without it, each entry point of "
                          "MLproject is a single step).") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping with 'name' and 'steps', found {type(data).__name__}.")
    return validate(PipelineFile, data, str(path))
