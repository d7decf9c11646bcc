"""A step as a value: what a front end declares, and the frozen, keyed description it resolves to.

Both front ends produce a :class:`StepDefinition`: an ``MLflowStep`` subclass from its class attributes, a
step of ``pipeline.yaml`` from its entry there. :func:`resolve` turns a definition, the step's parameter
values and its upstream steps into a :class:`ResolvedStep` (project, entry point, typed params, code
version, environment, upstream keys, dataset inputs, outputs, profile, launcher). The cache key is a
function of that value alone (:attr:`ResolvedStep.key`): the same step gives the same key whichever front
end declared it. Executing a resolved step is :mod:`mltf_flow.step_run`; the Luigi adapter is
:mod:`mltf_flow.step`. Nothing here imports luigi, mlflow or dask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mltf_flow.cache_key import CodeVersion, cache_key, code_hash
from mltf_flow.code_set import AUTO, parameter_files
from mltf_flow.config.pipeline import LAUNCHERS
from mltf_flow.errors import ConfigError
from mltf_flow.launch.base import StepTimeout
from mltf_flow.mlproject import EntryPoint, ParamValue, Project
from mltf_flow.project_outputs import load_outputs

if TYPE_CHECKING:
    from mltf_flow.clusters.profiles import Profile
    from mltf_flow.config import Settings
    from mltf_flow.environment import StepEnvironment

MODEL_PREFIX = "model:"


@dataclass(frozen=True)
class StepDefinition:
    """What a front end declares about a step (see ``MLflowStep``'s attributes for each meaning)."""

    project_dir: Path
    entry_point: str
    #: Step name in tags and logs; default: the entry point.
    name: str | None = None
    #: Pipeline (experiment, parent-run) name; default: the MLproject name.
    pipeline: str | None = None
    code_paths: tuple[str, ...] = (AUTO,)
    #: Declared outputs: name -> artifact path in the run, or ``model:NAME``.
    outputs: Mapping[str, str] = field(default_factory=dict)
    #: Parameters filled from requirements: param -> ``requirement`` or ``requirement.output``.
    inputs: Mapping[str, str] = field(default_factory=dict)
    pass_through: tuple[str, ...] = ()
    allow_extra_params: bool = False
    needs_gpu: bool = False
    run_on: str = "driver"
    default_world_size: int | None = None
    #: Seconds the command may run (wins over the profile's ``timeout``); None: the profile's, if any.
    timeout: float | None = None
    #: Where ``timeout`` was declared (file and key, or class attribute), for messages.
    timeout_source: str = ""

    def __post_init__(self) -> None:
        if self.run_on not in LAUNCHERS:
            raise ConfigError(f"step {self.name or self.entry_point!r}: run_on {self.run_on!r} is not one of "
                              f"{', '.join(LAUNCHERS)}.")

    @property
    def step_name(self) -> str:
        return self.name or self.entry_point

    def output_spec(self, output: str) -> str:
        """The artifact path (or ``model:NAME``) of output ``output`` ("" = the only one), for keys."""
        name = output or (next(iter(self.outputs)) if len(self.outputs) == 1 else "")
        return self.outputs.get(name, name)


@runtime_checkable
class Upstream(Protocol):
    """What a step needs from a requirement: a key to chain into its own, and outputs to consume."""

    def upstream_key(self) -> str | None: ...

    def dataset_inputs(self) -> list[dict[str, str]]: ...

    def output_spec(self, output: str) -> str: ...

    def resolve_output(self, output: str | None, settings: Settings) -> str: ...

    def upstream_run_id(self) -> str | None: ...

    def manifest_file(self) -> Path | None: ...


@dataclass(frozen=True)
class InputRef:
    """A parameter fed by an upstream output: which requirement, which output, and what enters the key."""

    requirement: str
    output: str
    #: The upstream step's key, and the artifact path behind the output: the key of the consumer holds
    #: what feeds the parameter, not what the requirement is called (both front ends agree on that).
    key: str
    spec: str


@dataclass(frozen=True)
class ResolvedStep:
    """One step, fully resolved: everything its key and its run depend on."""

    definition: StepDefinition
    project: Project
    #: Entry-point parameters normalised to their MLproject types, defaults merged (inputs excluded).
    params: Mapping[str, ParamValue]
    inputs: Mapping[str, InputRef]
    #: Requirement name -> its key (a plain Luigi task: its task id).
    upstream: Mapping[str, str]
    datasets: tuple[Mapping[str, str], ...]
    code: CodeVersion
    environment: StepEnvironment
    profile: Profile
    #: Ranks of a ddp step (None otherwise).
    world_size: int | None = None
    #: How long the command may run (the step's own value, else its profile's); not in the key: a run that
    #: finished within any limit is the same result.
    timeout: StepTimeout | None = None

    @property
    def name(self) -> str:
        return self.definition.step_name

    @property
    def pipeline(self) -> str:
        return self.definition.pipeline or self.project.name

    @property
    def entry(self) -> EntryPoint:
        return self.project.entry_point(self.definition.entry_point)

    @property
    def outputs(self) -> Mapping[str, str]:
        return self.definition.outputs

    @property
    def run_on(self) -> str:
        return self.definition.run_on

    def key_params(self) -> dict[str, Any]:
        values: dict[str, Any] = dict(self.params)
        for param, ref in self.inputs.items():
            values[param] = {"from": ref.key, "output": ref.spec}
        return values

    @property
    def key(self) -> str:
        """The cache key (mltf_flow.cache_key): a function of this value alone."""
        entry = self.entry
        return cache_key(
            project=self.project.name,
            entry_point=entry.name,
            command=entry.command,
            params=self.key_params(),
            code=self.code.hash,
            env=self.environment.key(),
            upstream=self.upstream.values(),
            inputs=self.datasets,
            # How the run executes, where that changes its result: the world size of DDP (global batch).
            execution={"world_size": self.world_size} if self.run_on == "ddp" else None,
        )

    def with_code(self, code: CodeVersion) -> ResolvedStep:
        """The same step keyed with another code version (once a run showed which files are outputs)."""
        return dataclasses.replace(self, code=code)


def step_params(definition: StepDefinition, project: Project, given: Mapping[str, Any]) -> dict[str, ParamValue]:
    """Entry-point parameters normalised to their MLproject types, defaults merged."""
    return project.entry_point(definition.entry_point).normalise(
        given, allow_extra=definition.allow_extra_params, filled_later=definition.inputs.keys()
    )


def step_parameter_files(project: Project, entry: EntryPoint, params: Mapping[str, ParamValue]) -> frozenset[str]:
    """Files of the project the step's ``path`` parameters point at (code, like files its command names)."""
    types = {name: param.type for name, param in entry.parameters.items()}
    return parameter_files(project.root, types, params)


def code_version(definition: StepDefinition, project: Project, params: Mapping[str, ParamValue],
                 work_dir: Path) -> CodeVersion:
    """The step's code (``code_paths``), without the files earlier runs of the project wrote."""
    entry = project.entry_point(definition.entry_point)
    return code_hash(project.root, definition.code_paths, command=entry.command,
                     outputs=load_outputs(work_dir, project.root),
                     named=step_parameter_files(project, entry, params))


def upstream_refs(
    definition: StepDefinition, requirements: Mapping[str, Upstream]
) -> tuple[dict[str, InputRef], dict[str, str], tuple[Mapping[str, str], ...]] | None:
    """(inputs, upstream keys, dataset inputs) from the requirements; None while one has no result yet."""
    for param, source in definition.inputs.items():
        if source.partition(".")[0] not in requirements:
            raise ConfigError(
                f"step {definition.step_name!r}: inputs maps {param!r} to {source!r}, but its requirements have no "
                f"{source.partition('.')[0]!r} (they are: {', '.join(requirements) or 'nothing'})."
            )
    keys: dict[str, str] = {}
    datasets: list[Mapping[str, str]] = []
    for name, task in requirements.items():
        key = task.upstream_key()
        if key is None:
            return None
        keys[name] = key
        datasets.extend(task.dataset_inputs())
    inputs: dict[str, InputRef] = {}
    for param, source in definition.inputs.items():
        req, _, output = source.partition(".")
        inputs[param] = InputRef(req, output, keys[req], requirements[req].output_spec(output))
    return inputs, keys, tuple(datasets)


def ddp_world_size(definition: StepDefinition, profile: Profile, given: int | None) -> int | None:
    """Ranks of a DDP step: the ``world_size`` parameter, else the definition's default, else every worker
    the profile gives (checked against the profile before anything is submitted). None for other steps."""
    if definition.run_on != "ddp":
        return None
    from mltf_flow.ddp.launcher import check_world_size

    size = given if given is not None else definition.default_world_size
    size = size if size is not None else profile.expected_workers
    check_world_size(profile, size)
    return int(size)


def step_timeout(definition: StepDefinition, profile: Profile) -> StepTimeout | None:
    """The step's timeout: its own ``timeout``, else its profile's; None when neither sets one. On a SLURM
    profile the walltime is the outer bound (the command runs inside, or beside, jobs SLURM ends at their
    walltime): a longer timeout is an input error, raised before anything is submitted."""
    from mltf_flow.config.profiles import SlurmProfile
    from mltf_flow.config.units import clock, walltime_seconds

    if definition.timeout is not None:
        found = StepTimeout(definition.timeout, definition.timeout_source or f"step {definition.step_name!r}")
    elif profile.timeout is not None:
        found = StepTimeout(profile.timeout, f"{profile.source_of('timeout')}: profile {profile.name!r}, key 'timeout'")
    else:
        return None
    if isinstance(profile, SlurmProfile) and found.seconds > walltime_seconds(profile.walltime):
        raise ConfigError(
            f"{found.source}: step {definition.step_name!r} has timeout {clock(found.seconds)}, longer than walltime "
            f"{profile.walltime} of its SLURM profile {profile.name!r} ({profile.source_of('walltime')}): SLURM would "
            f"end the jobs first. Lower the timeout to at most \"{clock(walltime_seconds(profile.walltime))}\" or "
            "raise the profile's walltime."
        )
    return found


def output_value(definition: StepDefinition, task: str, output: str | None, run_id: str, settings: Settings) -> str:
    """Declared output ``output`` (None: the only one) of run ``run_id`` of the step ``task`` as a value for a
    downstream parameter: a local file path for artifacts, a ``models:/`` URI for logged models."""
    from mltf_flow.tracking import Tracker

    outputs = definition.outputs
    if output is None:
        if len(outputs) != 1:
            raise ConfigError(f"{task} declares outputs {sorted(outputs)}; name one, e.g. "
                              f"'{definition.step_name}.{next(iter(outputs), 'OUTPUT')}'.")
        output = next(iter(outputs))
    if output not in outputs:
        raise ConfigError(f"{task} has no output {output!r}; declared outputs: {sorted(outputs) or 'none'}.")
    spec, tracker = outputs[output], Tracker(settings)
    if spec.startswith(MODEL_PREFIX):
        return tracker.model_uri(run_id, spec[len(MODEL_PREFIX) :])
    return str(tracker.artifact_local_path(run_id, spec, settings.work_dir / "inputs"))


def resolve(
    definition: StepDefinition, project: Project, params: Mapping[str, ParamValue], *,
    requirements: Mapping[str, Upstream], code: CodeVersion, environment: StepEnvironment, profile: Profile,
    world_size: int | None,
) -> ResolvedStep | None:
    """The step as a value; None while an upstream result does not exist yet."""
    refs = upstream_refs(definition, requirements)
    if refs is None:
        return None
    inputs, keys, datasets = refs
    return ResolvedStep(definition=definition, project=project, params=dict(params), inputs=inputs,
                        upstream=keys, datasets=datasets, code=code, environment=environment, profile=profile,
                        world_size=ddp_world_size(definition, profile, world_size),
                        timeout=step_timeout(definition, profile))


__all__ = [
    "LAUNCHERS", "MODEL_PREFIX", "InputRef", "ResolvedStep", "StepDefinition", "Upstream", "code_version",
    "ddp_world_size", "output_value", "resolve", "step_parameter_files", "step_params", "step_timeout",
    "upstream_refs",
]
