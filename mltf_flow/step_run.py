"""Executing one resolved step: the heavy half of the step contract, imported only when a step runs.

Phases over the value (:class:`mltf_flow.step_def.ResolvedStep`), in an order chosen so that nothing is
half-done:

1. **plan**: everything that can be checked is checked before a run exists (upstream outputs resolved into
   parameters, the command as MLflow computes it, lineage);
2. **open**: the profile's cluster is reached; the step's key is claimed: runs with this key whose owner's
   lease expired are reaped, a live one (another invocation runs the step) is waited for and its result
   used (no double launch); the step run is created under the invocation's parent run, with params and
   lineage tags (or a failed run with checkpoints is reopened), and leased while this process runs it;
3. **launch**: the command runs; its log is logged as artifact ``mltf/step.log`` whatever happens;
4. **settle**: only exit code 0 **and** every declared output present give ``mltf.complete=true`` +
   FINISHED; anything else ends the run FAILED and raises.

From the moment the run exists, :func:`mltf_flow.run_guard.run_guard` ends it FAILED or KILLED (Ctrl-C,
SIGTERM) whatever escapes: a run never stays RUNNING.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow import phases, secret_args
from mltf_flow.claim import Claim, claim
from mltf_flow.clusters import session
from mltf_flow.code_set import command_files
from mltf_flow.config.profiles import SlurmProfile
from mltf_flow.config.units import clock
from mltf_flow.continuation import continued, margin_env
from mltf_flow.errors import OutputMissing, StepError, StepFailed, StepTimedOut
from mltf_flow.invocation import INVOCATION_ENV, invocation_id
from mltf_flow.launch.base import LaunchRequest, LaunchResult
from mltf_flow.lease import renewer
from mltf_flow.lineage_view import describe_parent
from mltf_flow.metric_progress import EpochProgress, total_epochs
from mltf_flow.mlproject import mlflow_command
from mltf_flow.progress import ClusterProgress, report_status
from mltf_flow.project_outputs import load_outputs, remember_outputs, snapshot, written
from mltf_flow.redaction import display_command
from mltf_flow.run_guard import RunGuard, run_guard
from mltf_flow.run_index import RunRef, run_index
from mltf_flow.step_def import MODEL_PREFIX, ResolvedStep, Upstream, code_version, step_parameter_files
from mltf_flow.step_lineage import changed, git_of, own_datasets, record, step_run_name
from mltf_flow.tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_PROJECT_BACKEND,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_PROJECT_ENV,
    MLFLOW_RUN_NAME,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    TAG_CACHE_KEY,
    TAG_CHANGED_PARAMS,
    TAG_CHECKPOINT_EPOCH,
    TAG_CODE_FILES,
    TAG_CODE_HASH,
    TAG_CODE_NOT_HASHED,
    TAG_COMMAND_PID,
    TAG_DASK_DASHBOARD,
    TAG_DASK_SCHEDULER,
    TAG_ENV_HASH,
    TAG_ENV_MANAGER,
    TAG_ENV_PREFIX,
    TAG_ERROR,
    TAG_GIT_DIRTY,
    TAG_INPUTS,
    TAG_INVOCATION_ID,
    TAG_KEY_BEFORE_RUN,
    TAG_LAUNCHER,
    TAG_PROFILE,
    TAG_REPLACES_RUN_IDS,
    TAG_ROLE,
    TAG_SLURM_JOB_IDS,
    TAG_TASK_ID,
    TAG_UPSTREAM_RUN_IDS,
)
from mltf_flow.tracking import Tracker, lineage_key_tags, run_url

if TYPE_CHECKING:
    import luigi

    from mltf_flow.clusters.profiles import Profile
    from mltf_flow.config import Settings

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Phase 1: what the run will be, computed before it exists."""

    step: ResolvedStep
    settings: Settings
    task_id: str
    #: Every parameter of the command: the step's own and the upstream outputs resolved into values.
    params: Mapping[str, Any]
    #: The command, with placeholders where secret values go (:mod:`mltf_flow.secret_args`).
    command: str
    upstream_runs: Mapping[str, str]
    manifests: Mapping[str, Path]
    #: ``MLTF_SECRET_<NAME>`` -> value: the secret parameters, for the command's environment only.
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: The code's git commit and dirtiness when the caller knows them (a study asks git once for all its
    #: trials: one code, one state); None: asked when the run's tags and description are written.
    git: tuple[str | None, bool] | None = None


@dataclass(frozen=True)
class Cluster:
    """The profile's Dask cluster as this step reaches it (started by the Luigi process)."""

    profile: Profile
    address: str
    client: Any
    dashboard: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class OpenRun:
    """Phase 2: the step's MLflow run, RUNNING."""

    tracker: Tracker
    experiment_id: str
    run_id: str
    parent_id: str
    log_path: Path
    #: A failed run with checkpoints set RUNNING again (not a new run).
    reopened: bool = False


def plan(step: ResolvedStep, requirements: Mapping[str, Upstream], settings: Settings, task_id: str) -> Plan:
    """Resolve upstream outputs into parameters and compute the command, before any run exists."""
    resolved = {param: requirements[ref.requirement].resolve_output(ref.output or None, settings)
                for param, ref in step.inputs.items()}
    upstream_runs: dict[str, str] = {}
    manifests: dict[str, Path] = {}
    for name, task in requirements.items():
        manifest, run_id = task.manifest_file(), task.upstream_run_id()
        if manifest is not None:
            manifests[name] = manifest
        elif run_id is not None:
            upstream_runs[name] = run_id
    return _planned(step, settings, task_id, resolved, upstream_runs, manifests)


def replan(base: Plan, step: ResolvedStep) -> Plan:
    """``base``'s plan for ``step``, the same step with other parameters (a trial of a study): the upstream
    outputs ``base`` resolved are reused, not fetched again."""
    resolved = {param: base.params[param] for param in step.inputs}
    return dataclasses.replace(_planned(step, base.settings, base.task_id, resolved, base.upstream_runs,
                                        base.manifests), git=base.git)


def _planned(step: ResolvedStep, settings: Settings, task_id: str, resolved: Mapping[str, Any],
             upstream_runs: Mapping[str, str], manifests: Mapping[str, Path]) -> Plan:
    params: dict[str, Any] = {**step.params, **resolved}
    storage = settings.work_dir / "storage" / invocation_id() / step.name
    types = {name: p.type for name, p in step.entry.parameters.items()}
    command_values, secret_env = secret_args.split(params, types)
    command = secret_args.hide(mlflow_command(step.project, step.definition.entry_point, command_values, storage),
                               secret_env)
    return Plan(step, settings, task_id, params, command, upstream_runs, manifests, secret_env)


def connect(profile: Profile, reporter: luigi.Task) -> Cluster:
    """Reach the profile's cluster (the Luigi process started it) and wait for its workers."""
    address = session.address(profile)
    client = session.client_for(profile)
    report_status(reporter, f"waiting for {profile.expected_workers} Dask worker(s) of profile {profile.name!r}")
    session.wait_for_workers(client, profile)
    # A cluster we started says its dashboard ("" = none: its scheduler's HTTP server then serves no dashboard,
    # though Dask's client still makes a link to it); only a scheduler someone else runs is asked.
    dashboard = (str(getattr(client, "dashboard_link", "") or "") if profile.scheduler_address
                 else session.dashboard_link(profile))
    job_ids = tuple(session.worker_job_ids(client)) if isinstance(profile, SlurmProfile) else ()
    return Cluster(profile, address, client, dashboard, job_ids)


def run_tags(plan: Plan, cluster: Cluster, key: str) -> dict[str, str]:
    """The step run's lineage tags (DESIGN.md "Lineage")."""
    step = plan.step
    code, environment, project = step.code, step.environment, step.project
    tags = {
        **lineage_key_tags(key, step.name, step.pipeline),
        TAG_ROLE: "step",
        TAG_TASK_ID: plan.task_id,
        TAG_CODE_HASH: code.hash,
        TAG_ENV_HASH: environment.key(),
        TAG_ENV_MANAGER: environment.manager,
        TAG_CODE_FILES: str(code.files),
        TAG_UPSTREAM_RUN_IDS: json.dumps(dict(plan.upstream_runs), sort_keys=True),
        TAG_INPUTS: json.dumps(own_datasets(plan), sort_keys=True),
        TAG_CHANGED_PARAMS: json.dumps(changed(step)),
        TAG_PROFILE: cluster.profile.name,
        TAG_LAUNCHER: step.run_on,
        TAG_DASK_DASHBOARD: cluster.dashboard,
        TAG_DASK_SCHEDULER: cluster.address,
        TAG_INVOCATION_ID: invocation_id(),
        MLFLOW_RUN_NAME: step_run_name(step),
        MLFLOW_SOURCE_TYPE: "PROJECT",
        MLFLOW_SOURCE_NAME: str(project.root),
        MLFLOW_PROJECT_ENTRY_POINT: step.definition.entry_point,
        MLFLOW_PROJECT_BACKEND: "mltf-local",
        MLFLOW_PROJECT_ENV: project.env_type or "local",
    }
    if environment.prefix is not None:
        tags[TAG_ENV_PREFIX] = str(environment.prefix)
    if code.selection is not None and code.selection.large:
        # Reported, never silently hashed: the run says which big files its key does not cover.
        tags[TAG_CODE_NOT_HASHED] = ",".join(code.selection.large)[:4000]
    commit, dirty = plan.git if plan.git is not None else git_of(step)
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
        tags[TAG_GIT_DIRTY] = str(dirty).lower()
    if cluster.job_ids:
        tags[TAG_SLURM_JOB_IDS] = ",".join(cluster.job_ids)
    return tags


def open_run(plan: Plan, cluster: Cluster, tracker: Tracker, reporter: luigi.Task) -> OpenRun | None:
    """Claim the step's key (:mod:`mltf_flow.claim`) and create its run, or reopen a checkpointed failed
    one; None when another invocation held the key and completed the step meanwhile."""
    step, settings = plan.step, plan.settings
    experiment = settings.experiment_for(step.pipeline)
    experiment_id = tracker.ensure_experiment(experiment)
    return claim(Claim(step.name, step.key, experiment, experiment_id, settings), tracker, reporter,
                 create=lambda reaped: _create(plan, cluster, tracker, experiment_id, reaped))


def _create(plan: Plan, cluster: Cluster, tracker: Tracker, experiment_id: str, reaped: list[str]) -> OpenRun:
    step, settings = plan.step, plan.settings
    parent_id = tracker.parent_run(experiment_id, step.pipeline, invocation_id())
    tags = run_tags(plan, cluster, step.key)
    if reaped:
        tags[TAG_REPLACES_RUN_IDS] = ",".join(reaped)
    try:
        resumable = tracker.resumable_run(experiment_id, step.key)
        if resumable is not None:
            # A failed attempt left checkpoints: continue that run (epochs done are not repeated).
            run_id = resumable[0]
            attempt = tracker.reopen_run(run_id, resumable[1], parent_id=parent_id, tags=tags)
            _log.info(f"step '{step.name}' resumes MLflow run {run_id} (attempt {attempt}) from its checkpoint "
                      f"after epoch {resumable[1].get(TAG_CHECKPOINT_EPOCH)}")
        else:
            run_id = tracker.create_step_run(experiment_id, parent_id=parent_id, run_name=tags[MLFLOW_RUN_NAME],
                                             tags=tags, params=dict(plan.params))
    except BaseException:  # no step run to guard yet: the parent must not stay RUNNING either
        tracker.settle_parent(parent_id, step=step.name, ok=False)
        raise
    describe_parent(tracker, parent_id)  # named after this step while it runs
    log_path = settings.work_dir / "logs" / step.pipeline / f"{step.name}-{run_id}.log"
    return OpenRun(tracker, experiment_id, run_id, parent_id, log_path, reopened=resumable is not None)


def command_env(step: ResolvedStep, settings: Settings, run_id: str, experiment_id: str) -> dict[str, str]:
    """Environment of the command: ours plus MLflow's run variables, with the step's environment first on
    PATH, so ``python`` in the MLproject command is the one it built (or, with ``local``, ours)."""
    from mltf_flow.pyenv import helpers_overlay

    # Our own invocation bookkeeping must not leak into the command: a command that runs a
    # pipeline itself starts an invocation of its own.
    env = {k: v for k, v in os.environ.items()
           if k not in (INVOCATION_ENV, "MLTF_MAIN_PID") and not k.startswith("MLTF_DASK_")}
    env.update(
        MLFLOW_TRACKING_URI=settings.tracking_uri,
        MLFLOW_RUN_ID=run_id,
        MLFLOW_EXPERIMENT_ID=experiment_id,
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
        MLTF_STEP=step.name,
        MLTF_PIPELINE=step.pipeline,
        MLTF_WORK_DIR=str(settings.work_dir),
        PYTHONUNBUFFERED="1",
    )
    environment = step.environment
    overlay = helpers_overlay(settings.work_dir / "pylib") if environment.prefix is not None else None
    return environment.command_env(env, overlay)


def make_launcher(step: ResolvedStep, client: Any) -> Any:
    """The launcher for the step's ``run_on`` (the extension point for new ways to run a command)."""
    if step.run_on == "ddp":
        from mltf_flow.ddp.launcher import DDPLauncher

        assert step.world_size is not None  # resolved for every ddp step (step_def.ddp_world_size)
        return DDPLauncher(client, step.profile, step.world_size)
    if step.run_on == "worker":
        from mltf_flow.launch.dask_worker import DaskWorkerLauncher

        return DaskWorkerLauncher(client, step.profile)
    from mltf_flow.launch.local import LocalLauncher

    return LocalLauncher()


def keep_inputs(plan: Plan, run: OpenRun) -> None:
    """The key's ingredients (``mltf/key.json``: why a later run differs, mltf_flow.key_diff), manifests of
    staged inputs and the environment's package list go with the run."""
    _keep_key(plan.step, run)
    for name, path in plan.manifests.items():
        run.tracker.log_artifact(run.run_id, path, "mltf/inputs", name=f"{name}.manifest.json")
    packages = plan.step.environment.packages
    if packages:
        path = plan.settings.work_dir / "storage" / invocation_id() / plan.step.name / "environment.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(packages)
        run.tracker.log_artifact(run.run_id, path, "mltf", name="environment.txt")


def _keep_key(step: ResolvedStep, run: OpenRun) -> None:
    from mltf_flow.key_diff import KEY_ARTIFACT, key_record

    run.tracker.client.log_dict(run.run_id, key_record(step), KEY_ARTIFACT)


def launch(plan: Plan, cluster: Cluster, run: OpenRun, reporter: luigi.Task) -> tuple[LaunchResult, list[str]]:
    """Phase 3: run the command; returns how it ended and the files it wrote into the project."""
    step, settings, tracker = plan.step, plan.settings, run.tracker
    keep_inputs(plan, run)
    record(plan, cluster, run)
    env = command_env(step, settings, run.run_id, run.experiment_id)
    env["DASK_SCHEDULER_ADDRESS"] = cluster.address
    credentials = session.credentials(cluster.profile)
    if credentials is not None:  # the command's own Client(address) speaks TLS with the cluster's key
        env.update(credentials.client_env())
    env.update(plan.secret_env)
    root = step.project.root
    before = snapshot(root)
    epochs = EpochProgress(settings.tracking_uri, run.run_id, step.name, total_epochs(plan.params), reporter)
    env.update(margin_env(cluster.profile))
    request = LaunchRequest(
        step=step.name, command=plan.command, cwd=root, env=env, log_path=run.log_path,
        stderr_tail_lines=settings.stderr_tail_lines,
        on_start=lambda pid: tracker.set_tags(run.run_id, {TAG_COMMAND_PID: str(pid)}),
        on_tags=lambda more: tracker.set_tags(run.run_id, more),
        display_command=display_command(plan.command, plan.params), timeout=step.timeout,
    )
    launcher = make_launcher(step, cluster.client)
    with ClusterProgress(reporter, cluster.client, f"{step.name} (dashboard {cluster.dashboard})"), epochs:
        result = continued(lambda: launcher.launch(request), cluster.client, cluster.profile,
                           lambda tags: tracker.set_tags(run.run_id, tags),
                           lambda: tracker.client.get_run(run.run_id).data.tags)
    phases.reached(phases.COMMAND_EXITED, step.name)
    after = snapshot(root)
    named = command_files(root, step.entry.command) | step_parameter_files(step.project, step.entry, step.params)
    wrote = written(before, after, keep=named, known=load_outputs(settings.work_dir, root))
    remember_outputs(settings.work_dir, root, wrote, step.name, run.run_id, after)
    job_ids = cluster.job_ids
    if isinstance(cluster.profile, SlurmProfile):
        later = session.worker_job_ids(cluster.client)
        if later and set(later) != set(cluster.job_ids):
            job_ids = tuple(sorted(set(cluster.job_ids) | set(later)))
            tracker.set_tags(run.run_id, {TAG_SLURM_JOB_IDS: ",".join(job_ids)})
    record(plan, cluster, run, job_ids=job_ids, first=False,
           outcome=f"command exited {result.exit_code} after {result.duration_s:.1f} s"
           + (" (timed out)" if result.timed_out else ""))
    tracker.log_artifact(run.run_id, run.log_path, "mltf", name="step.log")
    for artifact, path in result.extra_logs:
        if path.exists():
            tracker.log_artifact(run.run_id, path, "mltf", name=artifact)
    return result, wrote


def missing_outputs(step: ResolvedStep, tracker: Tracker, experiment_id: str, run_id: str) -> list[str]:
    """Declared outputs the run does not have."""
    missing = []
    for name, spec in step.outputs.items():
        if spec.startswith(MODEL_PREFIX):
            ok = tracker.has_model(experiment_id, run_id, spec[len(MODEL_PREFIX) :])
        else:
            ok = tracker.has_artifact(run_id, spec)
        if not ok:
            missing.append(f"{name} ({spec})")
    return missing


def _log_project_outputs(step: ResolvedStep, tracker: Tracker, run_id: str, wrote: list[str]) -> None:
    """Declared outputs the command wrote into its project directory instead of logging them (as scripts
    written for plain ``mlflow run`` do: ``results/events.csv``) become the run's artifacts at that path, so
    they are tracked with the run and downstream steps receive them like any other output."""
    fresh = set(wrote)
    for spec in step.outputs.values():
        if spec.startswith(MODEL_PREFIX) or spec not in fresh or tracker.has_artifact(run_id, spec):
            continue
        parent = str(Path(spec).parent)
        tracker.log_artifact(run_id, step.project.root / spec, None if parent == "." else parent)


def settled_key(step: ResolvedStep, settings: Settings, wrote: list[str]) -> ResolvedStep:
    """The step as its run should be keyed. If the command wrote files the key had counted as code (a
    tracked file it rewrites, an output left by a hand run) and the step's code rules leave them out now
    that they are known outputs, the run is keyed without them (contents as hashed before the run), so
    the next identical invocation finds it. Files an explicit ``code:`` list still covers are warned about."""
    if not wrote:
        return step
    hashed = {rel for rel, _ in step.code.digests}
    fresh = code_version(step.definition, step.project, step.params, settings.work_dir).selection
    still = sorted(set(wrote) & set(fresh.files if fresh else ()))
    if still:
        _log.warning(f"warning: step '{step.name}' wrote {len(still)} file(s) that its code list "
                     f"{list(step.definition.code_paths)} covers ({', '.join(still[:5])}"
                     f"{', ...' if len(still) > 5 else ''}): its key changes with every run, so every invocation "
                     "runs it again. Leave them out ('!out/*') or use code: auto.")
    dropped = (set(wrote) & hashed) - set(still)
    return step.with_code(step.code.without(dropped)) if dropped else step


def settle(plan: Plan, run: OpenRun, result: LaunchResult, wrote: list[str], guard: RunGuard,
           reporter: luigi.Task, *, end_tags: Callable[[bool], Mapping[str, str]] | None = None) -> None:
    """Phase 4: FINISHED + ``mltf.complete=true`` only for exit code 0 with every declared output.
    ``end_tags`` (given whether the run completed) are set with its exit code, in the same request."""
    step, tracker, name = plan.step, run.tracker, plan.step.name
    def end(ok: bool, exit_code: int | None, status: str | None = None) -> None:
        guard.end(ok=ok, exit_code=exit_code, status=status, tags=end_tags(ok) if end_tags else None)

    if result.timed_out and step.timeout is not None:
        timed_out = StepTimedOut(
            step=name, run_id=run.run_id, exit_code=result.exit_code, stderr_tail=result.stderr_tail,
            log_path=str(run.log_path), timeout=clock(step.timeout.seconds), source=step.timeout.source,
            summary=result.summary,
        )
        tracker.set_tags(run.run_id, {TAG_ERROR: timed_out.reason})
        end(False, result.exit_code)
        raise timed_out
    if result.exit_code != 0:
        end(False, result.exit_code)
        raise StepFailed(
            step=name, run_id=run.run_id, exit_code=result.exit_code, stderr_tail=result.stderr_tail,
            log_path=str(run.log_path), summary=result.summary,
        )
    verdict = tracker.run_status(run.run_id)
    if verdict in ("FAILED", "KILLED"):  # the script ended its own run so: its verdict stands
        end(False, 0, verdict)
        raise StepError(
            f"step '{name}' exited 0 but its script ended MLflow run {run.run_id} {verdict}: the run stays "
            f"{verdict} and is not reused. Fix what made the script fail it (log: {run.log_path}).",
            step=name, run_id=run.run_id,
        )
    _log_project_outputs(step, tracker, run.run_id, wrote)
    missing = missing_outputs(step, tracker, run.experiment_id, run.run_id)
    if missing:
        end(False, 0)
        raise OutputMissing(
            f"step '{name}' exited 0 but did not produce declared output(s): {', '.join(missing)} "
            f"(MLflow run {run.run_id}, marked FAILED). Log them from the entry point (mlflow.log_artifact / "
            f"log_model), write them to that path in the project directory ({step.project.root}), or fix the "
            f"step's outputs. Log: {run.log_path}",
            step=name,
            run_id=run.run_id,
        )
    key = step.key
    final = settled_key(step, plan.settings, wrote)
    if final is not step and final.key != key:
        tracker.set_tags(run.run_id, {TAG_CACHE_KEY: final.key, TAG_CODE_HASH: final.code.hash,
                                      TAG_KEY_BEFORE_RUN: key})
        _keep_key(final, run)  # the record of the key the run is found by
        key = final.key
    phases.reached(phases.OUTPUTS_VERIFIED, name)
    end(True, 0)
    run_index(plan.settings.tracking_uri, plan.settings.prefetch_limit).remember(
        run.experiment_id, RunRef(run.run_id, "FINISHED", key, int(time.time() * 1000))
    )
    report_status(reporter, f"done: MLflow run {run.run_id} ({result.duration_s:.1f} s)", percent=100)


def execute(step: ResolvedStep, requirements: Mapping[str, Upstream], *, settings: Settings, task_id: str,
            reporter: luigi.Task) -> None:
    """Run a resolved step through the four phases (see the module docstring)."""
    planned = plan(step, requirements, settings, task_id)
    cluster = connect(step.profile, reporter)
    tracker = Tracker(settings)
    run = open_run(planned, cluster, tracker, reporter)
    if run is None:  # another invocation ran it with the same inputs while we waited
        return
    phases.reached(phases.RUN_CREATED, step.name)
    url = run_url(settings.tracking_uri, run.experiment_id, run.run_id)
    report_status(reporter, f"running: MLflow run {run.run_id}; Dask dashboard {cluster.dashboard}",
                  url=url or cluster.dashboard, percent=0)
    leases = renewer(settings.tracking_uri, settings.lease_seconds)
    leases.hold(run.run_id, run.parent_id)
    try:
        with run_guard(tracker, run.run_id, parent_id=run.parent_id, step=step.name,
                       log_path=run.log_path) as guard:
            result, wrote = launch(planned, cluster, run, reporter)
            settle(planned, run, result, wrote, guard, reporter)
    finally:
        leases.release(run.run_id, run.parent_id)


__all__ = ["Cluster", "OpenRun", "Plan", "command_env", "connect", "execute", "keep_inputs", "launch",
           "make_launcher", "missing_outputs", "open_run", "plan", "replan", "run_tags", "settle", "settled_key"]
