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
import shlex
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import luigi

from mltf_flow.cache_key import CodeVersion, cache_key, code_hash
from mltf_flow.clusters.session import is_main_process, mark_main_process
from mltf_flow.config import Settings, load_settings
from mltf_flow.console import use_console
from mltf_flow.errors import ConfigError, ParameterError
from mltf_flow.mlproject import EntryPoint, ParamValue, Project, read_project
from mltf_flow.project_outputs import load_outputs
from mltf_flow.retcodes import apply_default_retcodes
from mltf_flow.targets.mlflow_run import MLflowRunTarget

if TYPE_CHECKING:
    from mltf_flow.clusters.profiles import Profile
    from mltf_flow.environment import StepEnvironment

# `luigi --module M` reads [retcode] right after importing M: failures must exit non-zero anywhere.
apply_default_retcodes()

_log = logging.getLogger(__name__)
INVOCATION_ENV = "MLTF_INVOCATION_ID"
_MODEL_PREFIX = "model:"
_OWN_PARAMS = ("profile", "pipeline_profile", "world_size", "env_manager")


def invocation_id() -> str:
    """The id of this pipeline invocation, shared by every Luigi worker process.

    It is fixed in the process that builds the DAG (tasks are instantiated there, before Luigi forks
    per-task workers), so forked workers inherit it and attach their step runs to one parent run.
    """
    return os.environ.setdefault(INVOCATION_ENV, uuid.uuid4().hex)


def new_invocation() -> str:
    """Start a new invocation in this process (for programs calling ``luigi.build`` repeatedly)."""
    os.environ[INVOCATION_ENV] = uuid.uuid4().hex
    return os.environ[INVOCATION_ENV]


@runtime_checkable
class Upstream(Protocol):
    """What a step needs from a requirement: a key to chain into its own, and outputs to consume."""

    def upstream_key(self) -> str | None: ...

    def dataset_inputs(self) -> list[dict[str, str]]: ...

    def resolve_output(self, output: str | None, settings: Settings) -> str: ...


class MLflowStep(luigi.Task):
    """Base class of pipeline steps backed by an MLproject entry point (see the module docstring)."""

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        invocation_id()
        mark_main_process()
        use_console()
        self._memo: dict[str, Any] = {}

    # -- what the step is -----------------------------------------------------------------------
    def project(self) -> Project:
        if "project" not in self._memo:
            self._memo["project"] = read_project(self.project_dir)
        project: Project = self._memo["project"]
        return project

    def entry(self) -> EntryPoint:
        return self.project().entry_point(self.entry_point)

    def pipeline_name(self) -> str:
        return self.pipeline or self.project().name

    def step_name(self) -> str:
        return self.step or self.entry_point

    def given_params(self) -> dict[str, Any]:
        """Raw entry-point parameter values; by default the Luigi parameters that are not None."""
        ep = self.entry()
        given: dict[str, Any] = {}
        stray: list[str] = []
        for name, value in self.param_kwargs.items():
            if name in self.pass_through or name in _OWN_PARAMS or value is None:
                continue
            if name in ep.parameters or ep.is_script or self.allow_extra_params:
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

    def params(self) -> dict[str, ParamValue]:
        """Entry-point parameters normalised to their MLproject types, defaults merged."""
        return self.entry().normalise(
            self.given_params(),
            allow_extra=self.allow_extra_params,
            filled_later=self.inputs.keys(),
        )

    def requirements(self) -> dict[str, luigi.Task]:
        """``requires()`` as a name -> task mapping."""
        req = self.requires()  # type: ignore[no-untyped-call]
        if req is None:
            return {}
        if isinstance(req, luigi.Task):
            return {"0": req}
        if isinstance(req, Mapping):
            return dict(req)
        return {str(i): task for i, task in enumerate(req)}

    # -- cache key ---------------------------------------------------------------------------------
    def code_version(self) -> CodeVersion:
        """The step's code (``code_paths``), without the files earlier runs of the project wrote."""
        memo = self._memo.get("code")
        if memo is None or memo[0] != invocation_id():
            root = self.project().root
            outputs = load_outputs(load_settings().work_dir, root)
            memo = (invocation_id(), code_hash(root, self.code_paths, command=self.entry().command, outputs=outputs,
                                               named=self.parameter_files()))
            self._memo["code"] = memo
        version: CodeVersion = memo[1]
        return version

    def parameter_files(self) -> frozenset[str]:
        """Files of the project this step's ``path`` parameters point at (code, like files its command names)."""
        from mltf_flow.code_set import parameter_files

        types = {name: param.type for name, param in self.entry().parameters.items()}
        return parameter_files(self.project().root, types, self.params())

    def env_manager_name(self) -> str:
        """The env manager this step runs with (checked: a conda project without conda fails here)."""
        from mltf_flow.environment import choose_manager

        return choose_manager(self.project(), self.env_manager or load_settings().env_manager)

    def environment(self) -> StepEnvironment:
        """The step's software environment, built now if it does not exist yet (once per process)."""
        if "env" not in self._memo:
            from mltf_flow.environment import default_env_root, prepare

            settings = load_settings()
            self._memo["env"] = prepare(self.project(), self.env_manager_name(),
                                        settings.env_root or default_env_root(),
                                        log=_env_log)
        environment: StepEnvironment = self._memo["env"]
        return environment

    def forget_key(self) -> None:
        """Drop the memoised code version and key (after a run taught us which files are outputs)."""
        self._memo.pop("code", None)
        self._memo.pop("key", None)

    def cache_key(self, code: CodeVersion | None = None) -> str | None:
        """This step's cache key, or None while an upstream result does not exist yet. With ``code``:
        the key this step has for that code version (used once a run showed which files are outputs)."""
        memo = self._memo.get("key")
        if code is None and memo is not None and memo[0] == invocation_id():
            return str(memo[1])
        project, ep = self.project(), self.entry()
        values: dict[str, Any] = dict(self.params())
        requirements = self.requirements()
        for param, source in self.inputs.items():
            if source.partition(".")[0] not in requirements:
                raise ConfigError(
                    f"{self.task_family}.inputs maps {param!r} to {source!r}, but requires() has no "
                    f"{source.partition('.')[0]!r} (it has: {', '.join(requirements) or 'nothing'})."
                )
        upstream: dict[str, str] = {}
        datasets: list[dict[str, str]] = []
        for name, task in requirements.items():
            if isinstance(task, Upstream):
                key = task.upstream_key()
                if key is None:
                    return None
                upstream[name] = key
                datasets.extend(task.dataset_inputs())
            else:
                # A plain Luigi task: its identity (family + parameters) stands in for a key.
                if not task.complete():
                    return None
                upstream[name] = task.task_id
        for param, source in self.inputs.items():
            req_name, _, output = source.partition(".")
            # What feeds the parameter, not what the requirement is called here: both front ends agree.
            values[param] = {"from": upstream[req_name], "output": _output_spec(requirements[req_name], output)}
        key = cache_key(
            project=project.name,
            entry_point=ep.name,
            command=ep.command,
            params=values,
            code=(code or self.code_version()).hash,
            env=self.environment().key(),
            upstream=upstream.values(),
            inputs=datasets,
            execution=self.execution_key(),
        )
        if code is None:
            self._memo["key"] = (invocation_id(), key)
        return key

    def execution_key(self) -> dict[str, Any]:
        """How the run executes, where that changes its result (part of the key; {} = nothing).

        For DDP the world size: the global batch grows with it, so the weights differ."""
        return {"world_size": self.ddp_world_size()} if self.run_on == "ddp" else {}

    def ddp_world_size(self) -> int:
        """Ranks of a DDP step: the ``world_size`` parameter, else the class default, else every
        worker the profile gives (checked against the profile before anything is submitted)."""
        from mltf_flow.ddp.launcher import check_world_size

        profile = self.cluster_profile()
        given = getattr(self, "world_size", None)
        size = given if given is not None else self.default_world_size
        size = size if size is not None else profile.expected_workers
        check_world_size(profile, size)
        return int(size)

    # -- where it runs ----------------------------------------------------------------------------
    def profile_name(self) -> str:
        """This step's profile, else the one inherited from downstream, else the configured default."""
        return self.profile or self.pipeline_profile or load_settings().profile

    def cluster_profile(self) -> Profile:
        """The resolved profile (its GPU variant for steps that need GPUs)."""
        from mltf_flow.clusters.profiles import get_profile, gpu_variant

        profile = get_profile(self.profile_name())
        return gpu_variant(profile) if self.needs_gpu else profile

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

    # -- Luigi contract ----------------------------------------------------------------------------
    def complete(self) -> bool:
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
        stale = stale_outputs(load_settings().work_dir, self.project().root, self.step_name(), ref.run_id)
        if stale and self._memo.get("stale_said") != ref.run_id:
            self._memo["stale_said"] = ref.run_id
            shown = ", ".join(stale[:5]) + (", ..." if len(stale) > 5 else "")
            _log.warning(f"step '{self.step_name()}' has a complete run ({ref.run_id}), but its files in "
                         f"{self.project().root} ({shown}) were since written by another run or changed: running "
                         "it again so they match.")
        return bool(stale)

    def output(self) -> MLflowRunTarget:
        settings = load_settings()
        return MLflowRunTarget(
            settings.tracking_uri,
            settings.experiment_for(self.pipeline_name()),
            self.cache_key,
            settings.prefetch_limit,
        )

    # -- as an upstream of other steps -------------------------------------------------------------
    def upstream_key(self) -> str | None:
        if self.output().exists():
            return self.cache_key()
        # Our run may have completed in another process of this invocation and learnt that some files of
        # the project are outputs (its key then leaves them out): look again with a fresh key.
        self.forget_key()
        return self.cache_key() if self.output().exists() else None

    def dataset_inputs(self) -> list[dict[str, str]]:
        return []  # our own inputs are already pinned by our key

    def resolve_output(self, output: str | None, settings: Settings) -> str:
        """A declared output of this step's complete run as a value for a downstream parameter:
        a local file path for artifacts, a ``models:/`` URI for logged models."""
        from mltf_flow.tracking import Tracker

        if output is None:
            if len(self.outputs) != 1:
                raise ConfigError(
                    f"{self.task_family} declares outputs {sorted(self.outputs)}; name one, e.g. "
                    f"'{self.step_name()}.{next(iter(self.outputs), 'OUTPUT')}'."
                )
            output = next(iter(self.outputs))
        if output not in self.outputs:
            raise ConfigError(
                f"{self.task_family} has no output {output!r}; declared outputs: {sorted(self.outputs) or 'none'}."
            )
        spec = self.outputs[output]
        run_id = self.output().run_id
        tracker = Tracker(settings)
        if spec.startswith(_MODEL_PREFIX):
            return tracker.model_uri(run_id, spec[len(_MODEL_PREFIX) :])
        return str(tracker.artifact_local_path(run_id, spec, settings.work_dir / "inputs"))

    # -- running -----------------------------------------------------------------------------------
    def launcher(self, client: Any, profile: Profile) -> Any:
        """The launcher for this step's command (the extension point for DDP and others)."""
        if self.run_on == "ddp":
            from mltf_flow.ddp.launcher import DDPLauncher

            return DDPLauncher(client, profile, self.ddp_world_size())
        if self.run_on == "worker":
            from mltf_flow.launch.dask_worker import DaskWorkerLauncher

            return DaskWorkerLauncher(client, profile)
        from mltf_flow.launch.local import LocalLauncher

        return LocalLauncher()

    def command_env(self, settings: Settings, run_id: str, experiment_id: str) -> dict[str, str]:
        """Environment of the command: ours plus MLflow's run variables, with the step's environment
        (:meth:`environment`) first on PATH, so ``python`` in the MLproject command is the one it built
        (or, with ``local``, the one mltf_flow runs in)."""
        # Our own invocation bookkeeping must not leak into the command: a command that runs a
        # pipeline itself starts an invocation of its own.
        env = {k: v for k, v in os.environ.items()
               if k not in (INVOCATION_ENV, "MLTF_MAIN_PID") and not k.startswith("MLTF_DASK_")}
        env.update(
            MLFLOW_TRACKING_URI=settings.tracking_uri,
            MLFLOW_RUN_ID=run_id,
            MLFLOW_EXPERIMENT_ID=experiment_id,
            MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
            MLTF_STEP=self.step_name(),
            MLTF_PIPELINE=self.pipeline_name(),
            MLTF_WORK_DIR=str(settings.work_dir),
            PYTHONUNBUFFERED="1",
        )
        from mltf_flow.pyenv import helpers_overlay

        environment = self.environment()
        overlay = helpers_overlay(settings.work_dir / "pylib") if environment.prefix is not None else None
        return environment.command_env(env, overlay)

    def run(self) -> None:
        from mltf_flow.step_run import execute_step

        execute_step(self)

    def missing_outputs(self, tracker: Any, experiment_id: str, run_id: str) -> list[str]:
        """Declared outputs the run does not have."""
        missing = []
        for name, spec in self.outputs.items():
            if spec.startswith(_MODEL_PREFIX):
                ok = tracker.has_model(experiment_id, run_id, spec[len(_MODEL_PREFIX) :])
            else:
                ok = tracker.has_artifact(run_id, spec)
            if not ok:
                missing.append(f"{name} ({spec})")
        return missing


def _output_spec(task: luigi.Task, output: str) -> str:
    """The artifact path (or ``model:NAME``) behind output ``output`` of an upstream task, for keys."""
    if isinstance(task, MLflowStep):
        name = output or (next(iter(task.outputs)) if len(task.outputs) == 1 else "")
        return task.outputs.get(name, name)
    return output or "manifest"  # a stage step has one output, its manifest


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


def display_command(command: str, params: Mapping[str, Any]) -> str:
    """``command`` with the values of secret-looking parameters masked, for logs."""
    from mltf_flow.tracking import is_secret_name

    shown = command
    for name, value in params.items():
        if is_secret_name(name) and str(value):
            shown = shown.replace(shlex.quote(str(value)), "***").replace(str(value), "***")
    return shown


__all__ = [
    "INVOCATION_ENV", "MLflowStep", "Upstream", "display_command", "invocation_id", "new_invocation"
]
