"""From ``mlflow run --backend mltf`` arguments to a submitted SLURM job and its MLflow run.

Order matters, so that a bad request leaves nothing behind (no run, no job, no half-written state):

1. :func:`plan_job` checks everything that can be checked where the user is: the backend config, the
   tracking URI, the project (fetched into the shared job directory when it is a git or zip URI: the
   nodes cannot read the login node's ``/tmp``), the entry point's parameters (typed, as in the
   pipelines), the environment manager, and the command as MLflow computes it. Secret parameters
   (secret-looking names, URLs with passwords) are placeholders ``@@MLTF_SECRET_<NAME>@@`` in the command
   and travel in sbatch's environment, never in the script, the spec, a tag, a param or any argv
   (:mod:`mltf_flow.secret_args`);
2. the script is rendered with a placeholder run id and pre-flighted with ``sbatch --test-only``, so
   SLURM's own rejection (unknown partition, gres beyond any node, time above the partition's limit)
   arrives before a run exists;
3. :func:`submit_job` creates the run (lineage tags and cache key as for pipeline steps, status
   SCHEDULED, the params), writes ``spec.json`` and ``job.sh`` into ``<job_dir>/<run_id>/``, submits,
   tags ``mltf.slurm_job_ids`` and keeps the script and spec as artifacts ``mltf/job.sh`` and
   ``mltf/job-spec.json``. A failing ``sbatch`` ends the run FAILED with sbatch's message.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shutil
import sys
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.backend.config import BackendConfig, parse_backend_config
from mltf_flow.backend.script import ScriptInputs, render_script
from mltf_flow.backend.spec import JobSpec
from mltf_flow.errors import ConfigError
from mltf_flow.mlproject import Project, read_project
from mltf_flow.tags import (
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_PROJECT_ENTRY_POINT,
    MLFLOW_PROJECT_ENV,
    MLFLOW_RUN_NAME,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
    TAG_CHECKPOINT_EPOCH,
    TAG_CODE_HASH,
    TAG_ENV_HASH,
    TAG_GIT_DIRTY,
    TAG_INPUTS,
    TAG_LAUNCHER,
    TAG_PROFILE,
    TAG_ROLE,
    TAG_SLURM_JOB_DIR,
    TAG_SLURM_JOB_IDS,
    TAG_SLURM_LOG,
    TAG_SLURM_REQUEST,
    TAG_SLURM_TASKS,
    TAG_TASK_ID,
    TAG_UPSTREAM_RUN_IDS,
)

if TYPE_CHECKING:
    from mltf_flow.config import Settings

_log = logging.getLogger(__name__)

PLACEHOLDER_RUN_ID = "0" * 32
_ENV_MANAGERS = ("local", "virtualenv")


@dataclass
class JobPlan:
    """Everything about a job except its run id (see :func:`plan_job`)."""

    config: BackendConfig
    project: Project
    project_uri: str
    entry_point: str
    experiment_id: str
    tracking_uri: str
    params: dict[str, Any]
    command: str
    display_command: str
    env_manager: str
    python_env: dict[str, Any] | None
    cache_key: str
    tags: dict[str, str]
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    #: Where the job reports, when not where the run is created: the gateway creates runs in its MLflow and
    #: its jobs report through its MLflow proxy (:mod:`mltf_flow.gateway`).
    job_tracking_uri: str | None = None
    #: More of sbatch's environment (so the job's, never the script's): the gateway's job credential and the
    #: user's secrets.
    job_env: dict[str, str] = field(default_factory=dict, repr=False)
    #: The checkpoint epoch of the run when it is submitted (a pre-created run may have one).
    checkpoint_epoch: str | None = None

    @property
    def reported_to(self) -> str:
        return self.job_tracking_uri or self.tracking_uri

    def job_name(self) -> str:
        name = self.config.job_name or f"mltf-{self.project.name}-{self.entry_point}"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]

    def job_dir(self, run_id: str) -> Path:
        return self.config.job_dir / run_id

    def spec(self, run_id: str) -> JobSpec:
        return JobSpec(
            run_id=run_id, experiment_id=self.experiment_id, tracking_uri=self.reported_to,
            project_dir=str(self.project.root), command=self.command, display_command=self.display_command,
            job_dir=str(self.job_dir(run_id)), env_manager=self.env_manager,
            local_bin=os.path.dirname(self.config.python), python_env=self.python_env,
            env_hash=self.project.env_hash(), env_root=str(self.config.env_root), tasks=self.config.tasks,
            fabric=self.config.fabric, interface=self.config.interface, kill_grace=self.config.kill_grace,
            forward_pre_timeout_signal=self.config.forward_pre_timeout_signal,
            stop_margin=float(self.config.signal_seconds), max_restarts=self.config.max_restarts,
            checkpoint_epoch=self.checkpoint_epoch,
            system_metrics=self.config.system_metrics,
            env={"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "PYTHONUNBUFFERED": "1",
                 "MLTF_STEP": self.entry_point, "MLTF_PIPELINE": self.project.name},
            helpers_dir=str(Path(__file__).resolve().parents[2]),
        )

    def script(self, run_id: str) -> str:
        job_dir = self.job_dir(run_id)
        return render_script(self.config, ScriptInputs(
            run_id=run_id, experiment_id=self.experiment_id, tracking_uri=self.reported_to,
            project_dir=str(self.project.root), job_dir=str(job_dir), spec_path=str(job_dir / "spec.json"),
            job_name=self.job_name(), display_command=self.display_command, entry_point=self.entry_point,
            env_manager=self.env_manager,
        ))


def check_tracking_uri(uri: str) -> str:
    """The tracking URI as the job must see it; credentials in it are refused (they would be written
    into the job script)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username or parts.password:
        raise ConfigError(
            f"the tracking URI {parts._replace(netloc=parts.hostname or '').geturl()} carries credentials; they "
            "would be written into the job script. Set MLFLOW_TRACKING_USERNAME/PASSWORD (or "
            "MLFLOW_TRACKING_TOKEN) in your shell instead: sbatch passes them to the job in its environment."
        )
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])  # the job runs elsewhere
    if parts.scheme in ("", "file") or uri.startswith(("./", "/")):
        raise ConfigError(
            f"tracking URI {uri!r}: MLflow's file store cannot be shared safely by jobs on other nodes. Use an "
            "MLflow server (http://...) or, on one machine, sqlite:////ABSOLUTE/PATH/mlflow.db."
        )
    return uri


def _fetch(project_uri: str, version: str | None, entry_point: str, params: Mapping[str, Any],
           config: BackendConfig) -> Path:
    """The project directory, on a filesystem the nodes share."""
    from mlflow.exceptions import MlflowException
    from mlflow.projects.utils import _is_local_uri, _is_zip_uri, _parse_subdirectory, fetch_and_validate_project

    try:
        work_dir = Path(fetch_and_validate_project(project_uri, version, entry_point, dict(params)))
    except MlflowException as exc:
        raise ConfigError(f"project {project_uri}: {exc.message}") from exc
    parsed, subdirectory = _parse_subdirectory(project_uri)
    if not (_is_zip_uri(parsed) or not _is_local_uri(parsed)):
        return work_dir
    # MLflow fetched it into this machine's /tmp: move it where the job can read it.
    fetched = Path(str(work_dir)[: -len(subdirectory)] if subdirectory else work_dir)
    shared = config.job_dir / "projects" / uuid.uuid4().hex
    shared.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(fetched), str(shared))
    return shared / subdirectory if subdirectory else shared


def _env_manager(config: BackendConfig, project: Project) -> tuple[str, dict[str, Any] | None]:
    from mltf_flow.pyenv import PythonEnv, read_python_env

    wanted = config.env_manager
    where = project.mlproject_path or project.root
    if project.env_type == "docker_env":
        raise ConfigError(f"{where}: docker_env projects cannot run on SLURM nodes here (no Docker daemon); "
                          "declare a python_env.yaml, or run it with --backend local.")
    if wanted is None:  # MLflow's own default: conda projects use conda, every other project a virtualenv
        wanted = "conda" if project.env_type == "conda_env" else "virtualenv"
    if wanted not in _ENV_MANAGERS:
        raise ConfigError(
            f"--env-manager {wanted} is not supported by the mltf backend (it supports {', '.join(_ENV_MANAGERS)}). "
            "Use --env-manager local (this interpreter's environment, on a shared filesystem) or virtualenv "
            "(python_env.yaml, built on the node)."
        )
    if wanted == "local":
        return "local", None
    if project.env_type == "conda_env":
        raise ConfigError(f"{where}: a conda project cannot run with --env-manager virtualenv; use --env-manager "
                          "local, or declare a python_env.yaml.")
    if project.env_type == "python_env" and project.env_files():
        return "virtualenv", read_python_env(project.env_files()[0]).as_dict()
    import mlflow

    # No env file: MLflow builds this Python with mlflow itself.
    default = PythonEnv(python=f"{sys.version_info.major}.{sys.version_info.minor}",
                        dependencies=(f"mlflow=={mlflow.__version__}",))
    return "virtualenv", default.as_dict()


def _source_tags(project_uri: str, project: Project, version: str | None) -> dict[str, str]:
    from mlflow.projects.utils import _expand_uri, _is_local_uri
    from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url

    from mltf_flow.cache_key import git_state

    tags = {MLFLOW_USER: getpass.getuser(), MLFLOW_SOURCE_TYPE: "PROJECT",
            MLFLOW_SOURCE_NAME: project_uri if not _is_local_uri(project_uri) else _expand_uri(project_uri)}
    commit, dirty = git_state(project.root)
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
        tags[TAG_GIT_DIRTY] = str(dirty).lower()
    url = get_git_repo_url(str(project.root))
    if url:
        tags[MLFLOW_GIT_REPO_URL] = url
    if version and get_git_commit(str(project.root)) and get_git_branch(str(project.root)) == version:
        tags[MLFLOW_GIT_BRANCH] = version
    return tags


def plan_job(project_uri: str, entry_point: str, params: Mapping[str, Any] | None, version: str | None,
             backend_config: Mapping[str, Any] | None, tracking_uri: str, experiment_id: str,
             settings: Settings | None = None) -> JobPlan:
    """Check a request and compute its job (step 1 of the module docstring); submits nothing. ``settings``:
    the resolved settings, when the caller has them."""
    from mltf_flow import secret_args
    from mltf_flow.cache_key import cache_key, code_hash
    from mltf_flow.config import load_settings
    from mltf_flow.mlproject import mlflow_command
    from mltf_flow.redaction import display_command

    tracking_uri = check_tracking_uri(tracking_uri)
    settings = settings or load_settings()
    config = parse_backend_config(backend_config, settings, work_dir=settings.work_dir)
    given = dict(params or {})
    work_dir = _fetch(project_uri, version, entry_point, given, config)
    project = read_project(work_dir)
    ep = project.entry_point(entry_point)
    values = ep.normalise(given, allow_extra=True)
    env_manager, python_env = _env_manager(config, project)

    types = {name: param.type for name, param in ep.parameters.items()}
    command_values, secrets = secret_args.split(values, types)
    storage = Path(config.storage_dir or config.job_dir / "storage" / uuid.uuid4().hex)
    command = secret_args.hide(mlflow_command(project, ep.name, command_values, storage), secrets)
    if storage.is_dir() and not any(storage.iterdir()):
        storage.rmdir()  # no remote path parameter was downloaded into it
    shown = display_command(command, values)

    from mltf_flow.cache_key import keyed_params

    keyed = keyed_params(values)
    execution = {"world_size": config.tasks} if config.tasks > 1 else None
    from mltf_flow.project_outputs import load_outputs

    # The same code rules as pipeline steps (mltf_flow.code_set), so both find each other's runs. The
    # environment enters as its declaration: a virtualenv is built later, in the job.
    code = code_hash(project.root, command=ep.command, outputs=load_outputs(settings.work_dir, project.root))
    key = cache_key(project=project.name, entry_point=ep.name, command=ep.command, params=keyed, code=code.hash,
                    env=project.env_hash(), upstream=(), execution=execution)
    from mltf_flow.tracking import lineage_key_tags

    tags = {
        **lineage_key_tags(key, ep.name, project.name),
        **_source_tags(project_uri, project, version),
        TAG_ROLE: "step",
        TAG_TASK_ID: f"mlflow-run:{project.name}:{ep.name}",
        TAG_CODE_HASH: code.hash,
        TAG_ENV_HASH: project.env_hash(),
        TAG_UPSTREAM_RUN_IDS: "{}",
        TAG_INPUTS: "[]",
        TAG_PROFILE: config.profile,
        TAG_LAUNCHER: "mlflow-backend",
        TAG_SLURM_REQUEST: " ".join(config.directives()),
        TAG_SLURM_TASKS: str(config.tasks),
        MLFLOW_PROJECT_ENTRY_POINT: ep.name,
        MLFLOW_PROJECT_ENV: env_manager,
        MLFLOW_RUN_NAME: ep.name,
    }
    return JobPlan(config=config, project=project, project_uri=project_uri, entry_point=ep.name,
                   experiment_id=str(experiment_id), tracking_uri=tracking_uri, params=keyed, command=command,
                   display_command=shown, env_manager=env_manager, python_env=python_env, cache_key=key, tags=tags,
                   secrets=secrets)


def preflight(plan: JobPlan) -> str:
    """``sbatch --test-only`` on the job's script; SLURM's rejection becomes :class:`SlurmRejected`."""
    from mltf_flow.slurm.preflight import check

    return check(plan.script(PLACEHOLDER_RUN_ID), lambda answer: _rejection(plan, answer))


def _rejection(plan: JobPlan, answer: str) -> str:
    """What a rejected job of ``plan`` asked for, around SLURM's ``answer``."""
    config = plan.config
    origins = ", ".join(sorted(set(config.sources.values())))
    return (
        f"SLURM rejects the job for entry point {plan.entry_point!r} (settings from {origins}):\n    {answer}\n"
        f"  It asked for: {' '.join(config.directives())}. Check them against `sinfo -o '%P %l %c %m %G'`; "
        f"print the whole script with: mltf-flow render --backend-config CONFIG {plan.project.root} "
        f"-e {plan.entry_point}"
    )


def submit_job(plan: JobPlan) -> Any:
    """Create the run, write the job's files, submit it (steps 3 of the module docstring)."""
    from mltf_flow.backend.submitted import SlurmSubmittedRun
    from mltf_flow.config import load_settings
    from mltf_flow.run_guard import run_guard
    from mltf_flow.slurm.sbatch import submit
    from mltf_flow.tracking import Tracker

    preflight(plan)
    settings = load_settings(tracking_uri=plan.tracking_uri)
    tracker = Tracker(settings)
    import mlflow

    tags = dict(plan.tags)
    active = mlflow.active_run()
    if active is not None:  # MLflow's own rule: a project run from inside a run is its child
        tags[MLFLOW_PARENT_RUN_ID] = active.info.run_id
    run_id, plan.experiment_id = _own_run(tracker, plan, tags)
    job_dir = plan.job_dir(run_id)
    spec = plan.spec(run_id)
    # Until SLURM has the job, the run is ours to end: a failed submission must not leave it SCHEDULED.
    with run_guard(tracker, run_id, error_prefix="submission failed: "):
        job_dir.mkdir(parents=True, exist_ok=True)
        spec.write(job_dir / "spec.json")
        script = plan.script(run_id)
        script_path = job_dir / "job.sh"
        script_path.write_text(script)
        if plan.config.script_file is not None:  # mlflow-slurm's sbatch-script-file: a copy where asked
            plan.config.script_file.parent.mkdir(parents=True, exist_ok=True)
            plan.config.script_file.write_text(script)
        tracker.client.update_run(run_id, status="SCHEDULED")
        job_id = submit(script_path, {**os.environ, **plan.secrets, **plan.job_env})
    tracker.set_tags(run_id, {TAG_SLURM_JOB_IDS: job_id, TAG_SLURM_JOB_DIR: str(job_dir),
                              TAG_SLURM_LOG: str(spec.log_path(job_id))})
    tracker.log_artifact(run_id, script_path, "mltf")
    tracker.log_artifact(run_id, job_dir / "spec.json", "mltf", name="job-spec.json")
    _log.info(f"submitted SLURM job {job_id} for MLflow run {run_id} (entry point {plan.entry_point!r}, "
              f"{plan.env_manager} environment)\n  log: {spec.log_path(job_id)}\n  follow it: mltf-flow job {run_id} "
              "--wait   cancel it: mltf-flow job " + run_id + " --cancel")
    return SlurmSubmittedRun(run_id, job_id, job_dir, plan.tracking_uri, poll_interval=plan.config.poll_interval,
                             max_poll_interval=plan.config.max_poll_interval)


def _own_run(tracker: Any, plan: JobPlan, tags: Mapping[str, str]) -> tuple[str, str]:
    """(run id, experiment id) of a new run, or of the pre-created one named by the config's ``run_id``
    (its tags and params added; it stays in its own experiment)."""
    from mlflow.entities import Param

    from mltf_flow.redaction import redact

    if plan.config.run_id is None:
        run_id = tracker.create_step_run(plan.experiment_id, parent_id=tags.get(MLFLOW_PARENT_RUN_ID),
                                         run_name=plan.entry_point, tags=tags, params=plan.params)
        return str(run_id), plan.experiment_id
    run_id = plan.config.run_id
    try:
        run = tracker.client.get_run(run_id)
    except Exception as exc:
        raise ConfigError(f"--backend-config run_id {run_id!r}: no such MLflow run ({exc}).") from exc
    if run.info.status in ("FINISHED", "FAILED", "KILLED"):
        raise ConfigError(f"--backend-config run_id {run_id}: the run is already {run.info.status}.")
    plan.checkpoint_epoch = run.data.tags.get(TAG_CHECKPOINT_EPOCH)
    tracker.set_tags(run_id, dict(tags))
    items = [Param(k, v[:6000]) for k, v in sorted(redact(plan.params).items()) if k not in run.data.params]
    if items:
        tracker.client.log_batch(run_id, params=items)
    return run_id, str(run.info.experiment_id)


def submit_project(project_uri: str, entry_point: str, params: Mapping[str, Any] | None, version: str | None,
                   backend_config: Mapping[str, Any] | None, tracking_uri: str, experiment_id: str) -> Any:
    """The backend's ``run()``: plan, pre-flight, submit (see the module docstring)."""
    from mltf_flow.console import use_console

    use_console()
    return submit_job(plan_job(project_uri, entry_point, params, version, backend_config, tracking_uri,
                               experiment_id))


def render_for(project_dir: str, entry_point: str, params: Mapping[str, Any], backend_config: Mapping[str, Any],
               env_manager: str | None) -> str:
    """The script ``mlflow run --backend mltf`` would submit (for ``mltf-flow render``); nothing is
    recorded or submitted. The run id is a placeholder."""
    from mltf_flow.config import load_settings

    settings = load_settings()
    config = {**backend_config, "ENV_MANAGER": env_manager}
    plan = plan_job(project_dir, entry_point, params, None, config, settings.tracking_uri, "0", settings)
    return plan.script(PLACEHOLDER_RUN_ID)

