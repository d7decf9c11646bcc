"""Executing one MLflowStep: the heavy half of the step contract, imported only when a step runs.

Order matters and is chosen so that nothing is half-done:

1. everything that can be checked is checked before a run exists (key, parameters, upstream
   outputs, the command as MLflow computes it);
2. stale RUNNING runs with this key are reaped (a live one stops us: no double launch);
3. the step run is created under the invocation's parent run, with params and lineage tags;
4. the command runs; its log is logged as artifact ``mltf/step.log`` whatever happens;
5. only exit code 0 **and** every declared output present give ``mltf.complete=true`` + FINISHED;
   anything else (including Ctrl-C / SIGTERM) ends the run FAILED or KILLED and raises.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.backend.liveness import submitted_job_alive
from mltf_flow.cache_key import CodeVersion, git_state
from mltf_flow.clusters import session
from mltf_flow.code_set import command_files
from mltf_flow.config import load_settings
from mltf_flow.errors import OutputMissing, StepError, StepFailed
from mltf_flow.launch.base import LaunchRequest
from mltf_flow.launch.local import Stopped
from mltf_flow.mlproject import mlflow_command
from mltf_flow.progress import ClusterProgress, report_status
from mltf_flow.project_outputs import load_outputs, remember_outputs, snapshot, written
from mltf_flow.run_index import RunRef, run_index
from mltf_flow.step import Upstream, display_command, invocation_id
from mltf_flow.tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_PROJECT_BACKEND,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_PROJECT_ENV,
    MLFLOW_RUN_NAME,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    TAG_CACHE_KEY,
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
from mltf_flow.tracking import Tracker, lineage_key_tags

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mltf_flow.step import MLflowStep


def _tracking_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def _settle_key(step: MLflowStep, tracker: Tracker, run_id: str, key: str, code: CodeVersion,
                wrote: list[str]) -> str:
    """The run's final key. If the command wrote files the key had counted as code (a tracked file it
    rewrites, an output left by a hand run) and the step's code rules leave them out now that they are
    known outputs, the run is keyed without them (contents as hashed before the run), so the next
    identical invocation finds it. Files an explicit ``code:`` list still covers are warned about."""
    if not wrote:
        return key
    hashed = {rel for rel, _ in code.digests}
    step.forget_key()
    fresh = step.code_version().selection
    still = sorted(set(wrote) & set(fresh.files if fresh else ()))
    if still:
        _log.warning(f"warning: step '{step.step_name()}' wrote {len(still)} file(s) that its code list "
                     f"{list(step.code_paths)} covers ({', '.join(still[:5])}{', ...' if len(still) > 5 else ''}): "
                     "its key changes with every run, so every invocation runs it again. Leave them out ('!out/*') "
                     "or use code: auto.")
    dropped = (set(wrote) & hashed) - set(still)
    settled = step.cache_key(code.without(dropped)) if dropped else key
    step.forget_key()
    if settled is None or settled == key:
        return key
    tracker.set_tags(run_id, {TAG_CACHE_KEY: settled, TAG_CODE_HASH: code.without(dropped).hash,
                              TAG_KEY_BEFORE_RUN: key})
    return settled


def _log_project_outputs(step: MLflowStep, tracker: Tracker, run_id: str, root: Path, wrote: list[str]) -> None:
    """Declared outputs the command wrote into its project directory instead of logging them (as scripts
    written for plain ``mlflow run`` do: ``results/events.csv``) become the run's artifacts at that path, so
    they are tracked with the run and downstream steps receive them like any other output."""
    fresh = set(wrote)
    for spec in step.outputs.values():
        if spec.startswith("model:") or spec not in fresh or tracker.has_artifact(run_id, spec):
            continue
        parent = str(Path(spec).parent)
        tracker.log_artifact(run_id, root / spec, None if parent == "." else parent)


def execute_step(step: MLflowStep) -> None:
    settings = load_settings()
    name = step.step_name()
    key = step.cache_key()
    if key is None:
        raise StepError(f"step '{name}' cannot run: an upstream result is missing.", step=name)
    project = step.project()
    values = step.params()
    code = step.code_version()
    environment = step.environment()

    # 1. Resolve upstream outputs into parameters and compute the command before creating a run.
    requirements = step.requirements()
    resolved: dict[str, str] = {}
    for param, source in step.inputs.items():
        req_name, _, output = source.partition(".")
        task = requirements[req_name]
        if not isinstance(task, Upstream):
            raise StepError(f"step '{name}': requirement {req_name!r} has no outputs to feed {param!r}.", step=name)
        resolved[param] = task.resolve_output(output or None, settings)
    upstream_runs: dict[str, str] = {}
    manifests: dict[str, Path] = {}
    datasets: list[dict[str, str]] = []
    for req_name, task in requirements.items():
        if isinstance(task, Upstream):
            datasets.extend(task.dataset_inputs())
        if hasattr(task, "manifest_path"):
            manifests[req_name] = task.manifest_path()
        elif hasattr(task, "cache_key"):
            upstream_runs[req_name] = task.output().run_id
    all_params: dict[str, Any] = {**values, **resolved}
    storage = settings.work_dir / "storage" / invocation_id() / name
    command = mlflow_command(project, step.entry_point, all_params, storage)

    # 2. The profile's cluster: started by the Luigi process, reached here through our own Client.
    profile = step.cluster_profile()
    address = session.address(profile)
    client = session.get_client(address)
    report_status(step, f"waiting for {profile.expected_workers} Dask worker(s) of profile {profile.name!r}")
    session.wait_for_workers(client, profile)
    dashboard = session.dashboard_link(profile) or str(getattr(client, "dashboard_link", "") or "")
    job_ids = session.worker_job_ids(client) if profile.kind == "slurm" else []

    tracker = Tracker(settings)
    pipeline = step.pipeline_name()
    experiment = settings.experiment_for(pipeline)
    experiment_id = tracker.ensure_experiment(experiment)
    reaped = tracker.reap_stale(experiment, experiment_id, key, name, job_alive=submitted_job_alive)
    parent_id = tracker.parent_run(experiment_id, pipeline, invocation_id())

    tags = {
        **lineage_key_tags(key, name, pipeline),
        TAG_ROLE: "step",
        TAG_TASK_ID: step.task_id,
        TAG_CODE_HASH: code.hash,
        TAG_ENV_HASH: environment.key(),
        TAG_ENV_MANAGER: environment.manager,
        TAG_CODE_FILES: str(code.files),
        TAG_UPSTREAM_RUN_IDS: json.dumps(upstream_runs, sort_keys=True),
        TAG_INPUTS: json.dumps(datasets, sort_keys=True),
        TAG_PROFILE: profile.name,
        TAG_LAUNCHER: step.run_on,
        TAG_DASK_DASHBOARD: dashboard,
        TAG_DASK_SCHEDULER: address,
        TAG_INVOCATION_ID: invocation_id(),
        MLFLOW_RUN_NAME: name,
        MLFLOW_SOURCE_TYPE: "PROJECT",
        MLFLOW_SOURCE_NAME: str(project.root),
        MLFLOW_PROJECT_ENTRY_POINT: step.entry_point,
        MLFLOW_PROJECT_BACKEND: "mltf-local",
        MLFLOW_PROJECT_ENV: project.env_type or "local",
    }
    if environment.prefix is not None:
        tags[TAG_ENV_PREFIX] = str(environment.prefix)
    if code.selection is not None and code.selection.large:
        # Reported, never silently hashed: the run says which big files its key does not cover.
        tags[TAG_CODE_NOT_HASHED] = ",".join(code.selection.large)[:4000]
    # "auto" is no path for git: ask about the project directory then (its untracked outputs count as dirty).
    git_paths = ["."] if "auto" in step.code_paths else [p for p in step.code_paths if not p.startswith("!")]
    commit, dirty = git_state(project.root, git_paths) if code.in_git else (None, False)
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
        tags[TAG_GIT_DIRTY] = str(dirty).lower()
    if reaped:
        tags[TAG_REPLACES_RUN_IDS] = ",".join(reaped)
    if job_ids:
        tags[TAG_SLURM_JOB_IDS] = ",".join(job_ids)
    resumable = tracker.resumable_run(experiment_id, key)
    if resumable is not None:
        # A failed attempt left checkpoints: continue that run (epochs done are not repeated).
        run_id = resumable[0]
        attempt = tracker.reopen_run(run_id, resumable[1], parent_id=parent_id, tags=tags)
        _log.info(f"step '{name}' resumes MLflow run {run_id} (attempt {attempt}) from its checkpoint "
                  f"after epoch {resumable[1].get(TAG_CHECKPOINT_EPOCH)}")
    else:
        run_id = tracker.create_step_run(
            experiment_id, parent_id=parent_id, run_name=name, tags=tags, params=all_params
        )
    url = _tracking_url(settings.tracking_uri, experiment_id, run_id)
    report_status(step, f"running: MLflow run {run_id}; Dask dashboard {dashboard}", url=url or dashboard, percent=0)

    log_path = settings.work_dir / "logs" / pipeline / f"{name}-{run_id}.log"
    finished = False
    extra_logs: tuple[tuple[str, Path], ...] = ()
    try:
        for req_name, path in manifests.items():
            tracker.log_artifact(run_id, path, "mltf/inputs", name=f"{req_name}.manifest.json")
        if environment.packages:
            packages = settings.work_dir / "storage" / invocation_id() / name / "environment.txt"
            packages.parent.mkdir(parents=True, exist_ok=True)
            packages.write_text(environment.packages)
            tracker.log_artifact(run_id, packages, "mltf", name="environment.txt")

        def record_pid(pid: int) -> None:
            tracker.set_tags(run_id, {TAG_COMMAND_PID: str(pid)})

        env = step.command_env(settings, run_id, experiment_id)
        env["DASK_SCHEDULER_ADDRESS"] = address
        before = snapshot(project.root)
        with ClusterProgress(step, client, f"{name} (dashboard {dashboard})"):
            result = step.launcher(client, profile).launch(
                LaunchRequest(
                    step=name,
                    command=command,
                    cwd=project.root,
                    env=env,
                    log_path=log_path,
                    stderr_tail_lines=settings.stderr_tail_lines,
                    on_start=record_pid,
                    on_tags=lambda more: tracker.set_tags(run_id, more),
                    display_command=display_command(command, all_params),
                )
            )
        extra_logs = result.extra_logs
        after = snapshot(project.root)
        named = command_files(project.root, step.entry().command) | step.parameter_files()
        wrote = written(before, after, keep=named, known=load_outputs(settings.work_dir, project.root))
        remember_outputs(settings.work_dir, project.root, wrote, name, run_id, after)
        if profile.kind == "slurm":
            later = session.worker_job_ids(client)
            if later and later != job_ids:
                tracker.set_tags(run_id, {TAG_SLURM_JOB_IDS: ",".join(sorted(set(job_ids) | set(later)))})
        tracker.log_artifact(run_id, log_path, "mltf", name="step.log")
        for artifact, path in extra_logs:
            if path.exists():
                tracker.log_artifact(run_id, path, "mltf", name=artifact)
        if result.exit_code != 0:
            tracker.finish_step(run_id, ok=False, exit_code=result.exit_code)
            finished = True
            tracker.settle_parent(parent_id, step=name, ok=False)
            raise StepFailed(
                step=name, run_id=run_id, exit_code=result.exit_code, stderr_tail=result.stderr_tail,
                log_path=str(log_path), summary=result.summary,
            )
        _log_project_outputs(step, tracker, run_id, project.root, wrote)
        missing = step.missing_outputs(tracker, experiment_id, run_id)
        if missing:
            tracker.finish_step(run_id, ok=False, exit_code=0)
            finished = True
            tracker.settle_parent(parent_id, step=name, ok=False)
            raise OutputMissing(
                f"step '{name}' exited 0 but did not produce declared output(s): {', '.join(missing)} "
                f"(MLflow run {run_id}, marked FAILED). Log them from the entry point (mlflow.log_artifact / "
                f"log_model), write them to that path in the project directory ({project.root}), or fix "
                f"{step.task_family}.outputs. Log: {log_path}",
                step=name,
                run_id=run_id,
            )
        key = _settle_key(step, tracker, run_id, key, code, wrote)
        tracker.finish_step(run_id, ok=True, exit_code=0)
        finished = True
        tracker.settle_parent(parent_id, step=name, ok=True)
        run_index(settings.tracking_uri, settings.prefetch_limit).remember(
            experiment_id, RunRef(run_id, "FINISHED", key, int(time.time() * 1000))
        )
        report_status(step, f"done: MLflow run {run_id} ({result.duration_s:.1f} s)", percent=100)
    except BaseException as exc:
        if not finished:
            # Interrupted (Ctrl-C, SIGTERM) or an error of ours: never leave the run RUNNING.
            killed = isinstance(exc, KeyboardInterrupt | SystemExit | Stopped)
            try:
                if log_path.exists():
                    tracker.log_artifact(run_id, log_path, "mltf", name="step.log")
                tracker.set_tags(run_id, {TAG_ERROR: f"{type(exc).__name__}: {exc}"[:5000]})
                tracker.finish_step(run_id, ok=False, exit_code=None, status="KILLED" if killed else "FAILED")
                tracker.settle_parent(parent_id, step=name, ok=False)
            except Exception as bookkeeping:  # the original error matters more; still say what else failed
                _log.error(f"could not mark MLflow run {run_id} as ended after {type(exc).__name__}: "
                           f"{bookkeeping}")
        raise


__all__ = ["execute_step"]
