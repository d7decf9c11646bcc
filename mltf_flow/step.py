"""MLflowStep: one MLproject entry point as a cached Luigi task whose output is a verified MLflow run.

A subclass names a project directory and an entry point; Luigi parameters whose names are entry-point
parameters become its values (``None`` means "use the MLproject default")::

    class Train(MLflowStep):
        project_dir = HERE / "jet_tagging"
        entry_point = "train"
        inputs = {"features": "features.features"}     # param <- requirement "features", output "features"
        outputs = {"model": "model:jet_tagger", "metrics": "metrics.json"}
        epochs = luigi.IntParameter(default=None)

        def requires(self):
            return {"features": ExtractFeatures()}

``run()`` follows DESIGN.md "The step contract": key, stale-run reaping, parent run, upstream outputs
resolved into parameters, the command launched with ``MLFLOW_RUN_ID`` set, and ``mltf.complete=true``
only after exit code 0 and every declared output verified. ``complete()`` never imports mlflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import luigi

from mltf_flow.clusters.session import is_main_process, mark_main_process
from mltf_flow.config import Settings, load_settings
from mltf_flow.console import use_console
from mltf_flow.described import deepest_first, drop_missing, held_value, hold_value, run_ended
from mltf_flow.errors import ConfigError, ParameterError
from mltf_flow.failure_report import watch_failures
from mltf_flow.input_check import check_luigi_command_line, input_errors, name_parse_errors
from mltf_flow.invocation import forget_shared, invocation_id, once_per_invocation, shared_per_invocation
from mltf_flow.luigi_defaults import apply_luigi_defaults
from mltf_flow.luigi_params import class_params
from mltf_flow.mlproject import EntryPoint, ParamValue, Project, read_project
from mltf_flow.pipeline_graph import STEP_KIND
from mltf_flow.plain_upstream import PlainUpstream
from mltf_flow.redaction import is_secret_name, strip_credentials
from mltf_flow.step_def import (
    ResolvedStep,
    StepDefinition,
    Upstream,
    code_version,
    output_value,
    resolve,
    step_params,
    step_timeout,
)
from mltf_flow.targets.mlflow_run import MLflowRunTarget

if TYPE_CHECKING:
    from mltf_flow.cache_key import CodeVersion
    from mltf_flow.clusters.profiles import Profile
    from mltf_flow.environment import StepEnvironment

# `luigi --module M` reads [retcode] and [core] right after importing M: failures must exit non-zero
# anywhere, and steps are claimed by key, not by Luigi's command-line lock.
apply_luigi_defaults()

_log = logging.getLogger(__name__)
_OWN_PARAMS = ("profile", "pipeline_profile", "world_size", "env_manager", "from_study")


class MLflowStep(luigi.Task):
    """Base class of pipeline steps backed by an MLproject entry point (see the module docstring).

    A thin Luigi adapter: the class attributes are the step's :class:`~mltf_flow.step_def.StepDefinition`,
    :meth:`describe` resolves it into the frozen :class:`~mltf_flow.step_def.ResolvedStep` whose key Luigi's
    ``complete()`` checks, and ``run()`` hands that value to :func:`mltf_flow.step_run.execute`.
    """

    #: What this task is to the status view and the picture (mltf_flow.pipeline_status).
    mltf_kind: ClassVar[str] = STEP_KIND
    #: Directory holding the MLproject file.
    project_dir: ClassVar[str | os.PathLike[str]]
    #: Entry point to run (a name from MLproject, or a ``.py``/``.sh`` script of the project).
    entry_point: ClassVar[str]
    #: Pipeline name (experiment and parent-run name); default: the MLproject ``name``.
    pipeline: ClassVar[str | None] = None
    #: Step name in tags and logs; default: the entry point name.
    step: ClassVar[str | None] = None
    #: The project's files this step's key covers: "auto" (its code, never its outputs), paths, globs,
    #: "!glob" to leave files out (see mltf_flow.code_set).
    code_paths: ClassVar[tuple[str, ...]] = ("auto",)
    #: Declared outputs: name -> artifact path in the run, or ``model:NAME`` for a logged model.
    outputs: ClassVar[Mapping[str, str]] = {}
    #: Parameters filled from requirements: param -> ``requirement`` or ``requirement.output``.
    inputs: ClassVar[Mapping[str, str]] = {}
    #: Luigi parameters that only feed requirements (not passed to the entry point).
    pass_through: ClassVar[tuple[str, ...]] = ()
    #: Pass Luigi parameters unknown to the entry point as ``--key value`` (like ``mlflow run``).
    allow_extra_params: ClassVar[bool] = False
    #: Steps that need GPUs use their profile's ``gpu_profile`` when it has none itself.
    needs_gpu: ClassVar[bool] = False
    #: Where the command runs: "driver" = on this machine, with DASK_SCHEDULER_ADDRESS for fan-out;
    #: "worker" = as one task on a worker of the profile's cluster (a GPU node for GPU steps);
    #: "ddp" = once per rank on the cluster's workers with the torchrun variables (mltf_flow.ddp).
    run_on: ClassVar[str] = "driver"
    #: Ranks of a "ddp" step when no ``world_size`` parameter says otherwise; None = every worker.
    default_world_size: ClassVar[int | None] = None
    #: How long the command may run before it is stopped and the step fails: "90s", "2h", "01:30:00" or
    #: seconds; None = the profile's ``timeout`` (default: no limit). At most the walltime of a SLURM profile.
    timeout: ClassVar[str | float | None] = None

    profile: str | None = luigi.OptionalParameter(
        default=None, significant=False, description="cluster profile of this step (default: the pipeline's)"
    )
    pipeline_profile: str | None = luigi.OptionalParameter(
        default=None, significant=False, visibility=luigi.parameter.ParameterVisibility.HIDDEN,
        description="profile inherited from the step that requires this one",
    )
    env_manager: str | None = luigi.OptionalParameter(
        default=None, significant=False,
        description="local | virtualenv | uv | conda, like `mlflow run` (default: setting env_manager, else "
                    "MLflow's default for the project); handed down to the steps this one requires",
    )
    from_study: str | None = luigi.OptionalParameter(
        default=None,
        description="an Optuna study of this step (its name, as `mltf-flow tune` prints it): its best trial's "
                    "parameters (and world size) are this step's, except those given explicitly",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Luigi parameters with secret-looking names (``api_token``) are kept out of Luigi's sight: not
        significant (not in the task id, repr or ERROR lines) and private (never sent to the scheduler)."""
        super().__init_subclass__(**kwargs)
        name_parse_errors(cls)  # `luigi ... Train --epochs abc` names the parameter
        for name, value in vars(cls).items():
            if isinstance(value, luigi.Parameter) and is_secret_name(name):
                value.significant = False
                value.visibility = luigi.parameter.ParameterVisibility.PRIVATE

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        """Luigi's list of the class's parameters, remembered per class (mltf_flow.luigi_params)."""
        return class_params(cls, super().get_params)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        invocation_id()
        mark_main_process()
        use_console()
        watch_failures(self, MLflowStep)  # recorded for the failure report; tracebacks to the invocation's log
        self._memo: dict[str, Any] = {}

    def __repr__(self) -> str:
        # A URL-valued parameter is shown without its password wherever Luigi names the task.
        return strip_credentials(str(super().__repr__()))  # type: ignore[no-untyped-call]

    # -- what the step is: a definition, resolved into a value ---------------------------------------
    def definition(self) -> StepDefinition:
        """The step as declared: this class's attributes (``pipeline.yaml`` steps override this)."""
        if "definition" not in self._memo:
            self._memo["definition"] = StepDefinition(
                project_dir=Path(self.project_dir), entry_point=self.entry_point, name=self.step,
                pipeline=self.pipeline, code_paths=tuple(self.code_paths), outputs=dict(self.outputs),
                inputs=dict(self.inputs), pass_through=tuple(self.pass_through),
                allow_extra_params=self.allow_extra_params, needs_gpu=self.needs_gpu, run_on=self.run_on,
                default_world_size=self.default_world_size, timeout=self._timeout_seconds(),
                timeout_source=f"{type(self).__name__}.timeout",
            )
        definition: StepDefinition = self._memo["definition"]
        return definition

    def _timeout_seconds(self) -> float | None:
        from mltf_flow.config.units import timeout_seconds

        if self.timeout is None:
            return None
        try:
            return timeout_seconds(self.timeout)
        except ValueError as exc:
            raise ConfigError(f"{type(self).__name__}.timeout: {exc} Set e.g. timeout = \"2h\".") from None

    def project(self) -> Project:
        if "project" not in self._memo:
            self._memo["project"] = read_project(self.definition().project_dir)
        project: Project = self._memo["project"]
        return project

    def entry(self) -> EntryPoint:
        return self.project().entry_point(self.definition().entry_point)

    def pipeline_name(self) -> str:
        return self.definition().pipeline or self.project().name

    def step_name(self) -> str:
        return self.definition().step_name

    def given_params(self) -> dict[str, Any]:
        """Raw entry-point parameter values; by default the Luigi parameters that are not None."""
        definition, ep = self.definition(), self.entry()
        given: dict[str, Any] = {}
        stray: list[str] = []
        for name, value in self.param_kwargs.items():
            if name in definition.pass_through or name in self.own_params() or value is None:
                continue
            if name in ep.parameters or ep.is_script or definition.allow_extra_params:
                given[name] = value
            else:
                stray.append(name)
        if stray:
            raise ParameterError(
                f"{self.task_family}: Luigi parameter(s) {', '.join(map(repr, stray))} are not parameters of "
                f"entry point {ep.name!r} ({', '.join(ep.parameters) or 'none'}). Rename them, list them in "
                "pass_through if they only feed requirements, or set allow_extra_params = True."
            )
        return given

    @classmethod
    def own_params(cls) -> tuple[str, ...]:
        """Luigi parameters of the step itself, never entry-point parameters."""
        return _OWN_PARAMS

    def study_values(self) -> Any:
        """The best trial of ``--from-study`` (mltf_flow.tune.best.BestTrial), read once."""
        from mltf_flow.tune.best import best_of

        name = str(self.from_study)
        return once_per_invocation(self._memo, "from_study", lambda: best_of(name, self.settings(),
                                                                             step=self.step_name()))

    def world_size_given(self) -> int | None:
        """The ranks asked for: ``--world-size``, else the world size of ``--from-study``'s trials."""
        own = getattr(self, "world_size", None)
        return self.study_values().world_size if own is None and self.from_study else own

    def params(self) -> dict[str, ParamValue]:
        """Entry-point parameters normalised to their MLproject types, defaults merged; with ``--from-study``,
        the best trial's under the given ones."""
        def given() -> dict[str, Any]:
            mine = self.given_params()
            return self.study_values().under(mine, self.entry(), self.definition().inputs) if self.from_study else mine

        return once_per_invocation(self._memo, "params",
                                   lambda: step_params(self.definition(), self.project(), given()))

    def requirements(self) -> dict[str, Upstream]:
        """``requires()`` as a name -> upstream mapping (plain Luigi tasks wrapped: their id is their key);
        asked once per invocation (a fan-out's ``requires()`` instantiates its N upstream tasks)."""
        return once_per_invocation(self._memo, "requirements", self._requirements)

    def _requirements(self) -> dict[str, Upstream]:
        req = self.requires()  # type: ignore[no-untyped-call]
        if req is None:
            tasks: dict[str, luigi.Task] = {}
        elif isinstance(req, luigi.Task):
            tasks = {"0": req}
        elif isinstance(req, Mapping):
            tasks = dict(req)
        else:
            tasks = {str(i): task for i, task in enumerate(req)}
        return {name: task if isinstance(task, Upstream) else PlainUpstream(task) for name, task in tasks.items()}

    def settings(self) -> Settings:
        """The settings of this invocation: resolved once (for every step of this process), then handed to
        everything the step does."""
        return shared_per_invocation("settings", None, None, load_settings)

    def describe(self) -> ResolvedStep | None:
        """This step as a value (memoised per invocation); None while an upstream result is missing. The
        steps it requires are described first, deepest first, without recursion (mltf_flow.described)."""
        held, value = held_value(self._memo)
        if held:
            return value  # type: ignore[no-any-return]
        steps = deepest_first(self, lambda task: [dep for dep in task.requirements().values()
                                                  if isinstance(dep, MLflowStep)],
                              lambda task: held_value(task._memo)[0], lambda task: str(task.task_id))
        for upstream in steps:
            upstream._describe_here()
        return self._describe_here()

    def _describe_here(self) -> ResolvedStep | None:
        """describe() once the steps this one requires hold their values (each is asked one level deep)."""
        held, value = held_value(self._memo)
        if held:
            return value  # type: ignore[no-any-return]
        params = self.params()
        code = once_per_invocation(self._memo, "code", lambda: self._shared_code(params))
        resolved = resolve(self.definition(), self.project(), params, requirements=self.requirements(),
                           code=code, environment=self.environment(), profile=self.cluster_profile(),
                           world_size=self.world_size_given())
        hold_value(self._memo, resolved)
        return resolved

    def _shared_code(self, params: Mapping[str, ParamValue]) -> CodeVersion:
        """The step's code version, shared with the steps of the same project, code paths and entry point
        (and ``path`` parameters) for this invocation: one listing and hash of the project, not one per step;
        forgotten by :meth:`forget_key`."""
        definition, project, work_dir = self.definition(), self.project(), self.settings().work_dir
        entry = project.entry_point(definition.entry_point)
        paths = tuple(sorted((name, value) for name, value in params.items()
                             if name in entry.parameters and entry.parameters[name].type == "path"))
        return shared_per_invocation(
            "code", ("step", project.root, definition.code_paths, definition.entry_point, paths, work_dir), None,
            lambda: code_version(definition, project, params, work_dir))

    def cache_key(self) -> str | None:
        """This step's cache key, or None while an upstream result does not exist yet."""
        value = self.describe()
        return None if value is None else value.key

    def code_version(self) -> CodeVersion:
        """The step's code (``code_paths``), without the files earlier runs of the project wrote."""
        return code_version(self.definition(), self.project(), self.params(), self.settings().work_dir)

    def forget_key(self) -> None:
        """Drop the memoised value (after a run taught us which files are outputs)."""
        self._memo.pop("code", None)
        self._memo.pop("value", None)
        forget_shared("code")  # the project's files may have changed: every step hashes them again

    def env_manager_name(self) -> str:
        """The env manager this step runs with (checked: a conda project without conda fails here)."""
        from mltf_flow.environment import choose_manager

        return choose_manager(self.project(), self.env_manager or self.settings().env_manager)

    def environment(self) -> StepEnvironment:
        """The step's software environment, built now if it does not exist yet (once per process)."""
        if "env" not in self._memo:
            from mltf_flow.environment import default_env_root, prepare

            project, manager, env_root = self.project(), self.env_manager_name(), self.settings().env_root
            # One check per project and invocation, not per step (the environment is the project's).
            self._memo["env"] = shared_per_invocation(
                "environment", (project.root, manager, env_root), project,
                lambda: prepare(project, manager, env_root or default_env_root(), log=_env_log))
        environment: StepEnvironment = self._memo["env"]
        return environment

    # -- where it runs ----------------------------------------------------------------------------
    def profile_name(self) -> str:
        """This step's profile, else the one inherited from downstream, else the configured default."""
        return self.profile or self.pipeline_profile or self.settings().profile

    def cluster_profile(self) -> Profile:
        """The resolved profile (its GPU variant for steps that need GPUs)."""
        from mltf_flow.clusters.profiles import get_profile, gpu_variant

        def resolved() -> Profile:
            try:
                profile = get_profile(self.profile_name())
            except ConfigError as exc:  # say where the name came from: a flag, a variable or a settings file
                raise type(exc)(f"{exc} (profile {self.profile_name()!r} from {self._profile_origin()})") from exc
            return gpu_variant(profile) if self.definition().needs_gpu else profile

        # Once per invocation for every step of this process with the same profile (not per step).
        return shared_per_invocation("profile", (self.profile_name(), self.definition().needs_gpu), None, resolved)

    def _profile_origin(self) -> str:
        if self.profile:
            return "--profile"
        if self.pipeline_profile:
            return "--profile of the step that requires this one"
        if os.environ.get("MLTF_FLOW_PROFILE"):
            return "MLTF_FLOW_PROFILE"
        return "the profile setting of a settings file"

    def upstream(self, cls: type[luigi.Task], **params: Any) -> luigi.Task:
        """Instantiate a requirement, handing down this pipeline's profile (use it in ``requires()``)."""
        from mltf_flow.staging.step import StageStep

        if issubclass(cls, MLflowStep | StageStep):
            params.setdefault("pipeline_profile", self.profile or self.pipeline_profile)
        if issubclass(cls, MLflowStep):
            params.setdefault("env_manager", self.env_manager)
        if issubclass(cls, StageStep):
            params.setdefault("pipeline", self.pipeline_name())
        return cls(**params)

    def check_input(self) -> list[luigi.Task]:
        """Everything the user gave this step, checked before anything runs (mltf_flow.input_check): its
        parameters, environment (built now, once) and profile; returns the tasks it requires."""
        self.params()
        # A docker_env project, conda without conda, a requirement pip cannot install: said before anything runs.
        self.environment()
        # A timeout beyond a SLURM profile's walltime: said now, before any job is submitted.
        step_timeout(self.definition(), self.cluster_profile())
        return [dep.task if isinstance(dep, PlainUpstream) else dep for dep in self.requirements().values()
                if isinstance(dep, PlainUpstream | luigi.Task)]

    # -- Luigi contract ----------------------------------------------------------------------------
    def complete(self) -> bool:
        # On `luigi --module`: the whole tree checked at the first call, and an input error is one line and
        # exit code 2, not Luigi's "error in complete() method" traceback (mltf_flow.input_check).
        with input_errors():
            check_luigi_command_line(self)
            return self._complete()

    def deps(self) -> list[luigi.Task]:
        with input_errors():
            return list(super().deps())  # type: ignore[no-untyped-call]

    def _complete(self) -> bool:
        done = bool(super().complete()) and not self._stale_project_files()  # type: ignore[no-untyped-call]
        if not done and is_main_process():
            # Start (and pre-flight) the cluster now, in the process that runs Luigi: task processes
            # forked for --workers N must find it running, and a profile SLURM rejects fails at once.
            from mltf_flow.clusters.session import prepare

            prepare(self.cluster_profile(), scale=os.environ.get("MLTF_SCALE_AT_SCHEDULING") == "1"
                    or _luigi_workers() > 1)
        return done

    def _stale_project_files(self) -> bool:
        """True when files this step writes into its project directory are not the reused run's: then
        it runs again rather than leave another run's files for the next step (mltf_flow.project_outputs)."""
        from mltf_flow.project_outputs import stale_outputs

        ref = self.output().run_ref()
        if ref is None:
            return False
        stale = stale_outputs(self.settings().work_dir, self.project().root, self.step_name(), ref.run_id)
        if stale and self._memo.get("stale_said") != ref.run_id:
            self._memo["stale_said"] = ref.run_id
            shown = ", ".join(stale[:5]) + (", ..." if len(stale) > 5 else "")
            _log.warning(f"step '{self.step_name()}' has a complete run ({ref.run_id}), but its files in "
                         f"{self.project().root} ({shown}) were since written by another run or changed: running "
                         "it again so they match.")
        return bool(stale)

    def output(self) -> MLflowRunTarget:
        settings = self.settings()
        return MLflowRunTarget(
            settings.tracking_uri,
            settings.experiment_for(self.pipeline_name()),
            self.cache_key,
            settings.prefetch_limit,
        )

    def run(self) -> None:
        from mltf_flow.step_run import execute

        drop_missing(self._memo)  # a stage step it requires may have run in this process since
        value = self.describe()
        if value is None:
            from mltf_flow.errors import StepError

            raise StepError(f"step '{self.step_name()}' cannot run: an upstream result is missing.",
                            step=self.step_name())
        try:
            execute(value, self.requirements(), settings=self.settings(), task_id=self.task_id, reporter=self)
        finally:
            # The run may have learnt that some files of the project are outputs: key afresh from now on.
            self.forget_key()
            run_ended()  # steps that were missing this result may be described now

    # -- as an upstream of other steps (mltf_flow.step_def.Upstream) ---------------------------------
    def upstream_key(self) -> str | None:
        if self.output().exists():
            return self.cache_key()
        if self.describe() is None:
            return None  # a result this step needs is missing (memoised: a chain is not walked once per step)
        # Our run may have completed in another process of this invocation and learnt that some files of
        # the project are outputs (its key then leaves them out): look again with a fresh key.
        self.forget_key()
        return self.cache_key() if self.output().exists() else None

    def dataset_inputs(self) -> list[dict[str, str]]:
        return []  # our own inputs are already pinned by our key

    def output_spec(self, output: str) -> str:
        return self.definition().output_spec(output)

    def upstream_run_id(self) -> str | None:
        return self.output().run_id

    def manifest_file(self) -> Path | None:
        return None

    def resolve_output(self, output: str | None, settings: Settings) -> str:
        """A declared output of this step's complete run as a value for a downstream parameter:
        a local file path for artifacts, a ``models:/`` URI for logged models."""
        return output_value(self.definition(), self.task_family, output, self.output().run_id, settings)


def _luigi_workers() -> int:
    """Luigi worker processes of this invocation (``--workers``), 1 when unknown."""
    try:
        return int(luigi.interface.core().workers)
    except Exception:  # outside a luigi command line
        return 1


def _env_log(line: str) -> None:
    """A line of an environment build (its own messages carry the prefix the console handler adds). Reuse
    is the normal case and is said once per step and process otherwise: only at debug level."""
    line = line.removeprefix("mltf_flow: ")
    _log.log(logging.DEBUG if line.startswith("reusing environment") else logging.INFO, line)


__all__ = ["MLflowStep", "PlainUpstream"]
