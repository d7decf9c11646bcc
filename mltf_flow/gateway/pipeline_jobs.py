"""A pipeline submission's job: ``mltf-flow run PROJECT --step TARGET`` as a SLURM batch job.

The gateway goes beyond the talk's single-project gateway here: a user sends a whole pipeline
(``pipeline.yaml`` and its MLproject) and a target step; the driver job runs it on the facility with its
cache, its profiles (the steps' own SLURM jobs and Dask clusters) and MLflow through the gateway's proxy,
as the user (every run it creates is stamped with the user and the submission by the proxy).

The driver script holds no secret: the job credential and the user's secrets travel in ``sbatch``'s
environment. It writes ``started.<jobid>`` when it starts (a restarted gateway finds the job by it after
SLURM forgot it) and ``exit-code.<jobid>`` when the pipeline ends (how the gateway tells a failed pipeline
from a finished one without accounting).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.errors import RequestRejected
from mltf_flow.gateway.settings import PIPELINE_JOB_KEYS
from mltf_flow.redaction import is_secret_name

if TYPE_CHECKING:
    from mltf_flow.gateway.settings import GatewaySettings
    from mltf_flow.gateway.store import Submission


def check_params(params: Mapping[str, Any]) -> dict[str, str]:
    """``-P`` values of a pipeline submission (``KEY`` or ``STEP.KEY``); secret-looking ones are refused: they
    would be written into the job script."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if is_secret_name(key):
            raise RequestRejected(
                f"parameter {key!r} looks like a secret, and a pipeline's parameters are written into its job "
                f"script. Store it once with `mltf-flow secrets add NAME` and read it from the environment.",
                status=422)
        if isinstance(value, dict | list):
            raise RequestRejected(f"parameter {key!r}: expected a single value, found {type(value).__name__}.",
                                  status=422)
        out[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def driver_defaults(settings: GatewaySettings) -> dict[str, Any]:
    """The driver job's settings: the gateway's ``pipeline`` section over what its ``backend`` section says of
    the site (partition, account, qos, time, memory, and the profile the steps' clusters come from); 4G of
    memory when neither says."""
    inherited = {k: v for k, v in settings.backend.items() if k in (*PIPELINE_JOB_KEYS, "profile")}
    # A memory request of its own: without one, a site whose DefMemPerNode is UNLIMITED gives the driver the
    # whole node, and the steps' worker jobs wait for memory behind it.
    return {"mem": "4G", **inherited, **settings.pipeline}


def job_dir(settings: GatewaySettings, sub: Submission) -> Path:
    return settings.state_path / "submissions" / sub.id / "job"


def render(sub: Submission, settings: GatewaySettings, project_dir: Path) -> str:
    """The driver job's script."""
    from mltf_flow.gateway.project_jobs import job_comment

    request = sub.request
    options = {**driver_defaults(settings), **(request.get("job") or {})}
    unknown = sorted(set(request.get("job") or {}) - set(PIPELINE_JOB_KEYS))
    if unknown:
        raise RequestRejected(f"job key(s) {', '.join(unknown)} cannot be set by a submission; you may set: "
                              f"{', '.join(PIPELINE_JOB_KEYS)}.", status=422)
    jobs = job_dir(settings, sub)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={sub.job_name}", f"#SBATCH --comment={job_comment(sub)}",
             f"#SBATCH --output={jobs}/driver-%j.log", "#SBATCH --export=ALL", "#SBATCH --nodes=1",
             "#SBATCH --ntasks=1", f"#SBATCH --chdir={project_dir}"]
    flags = {"partition": "--partition", "account": "--account", "time": "--time", "mem": "--mem",
             "cpus_per_task": "--cpus-per-task", "qos": "--qos"}
    lines += [f"#SBATCH {flag}={options[key]}" for key, flag in flags.items() if options.get(key) not in (None, "")]
    python = str(options.get("python") or sys.executable)
    command = [python, "-m", "mltf_flow.cli", "run", str(project_dir), "--step", str(request["target"])]
    for key, value in check_params(request.get("params") or {}).items():
        command += ["-P", f"{key}={value}"]
    profile = request.get("profile") or options.get("profile")
    if profile:
        command += ["--profile", str(profile)]
    if request.get("env_manager"):
        command += ["--env-manager", str(request["env_manager"])]
    lines += [
        f"# mltf-gateway submission {sub.id} of {sub.user}: pipeline target {request['target']!r}",
        f"touch {shlex.quote(str(jobs))}/started.$SLURM_JOB_ID",
        *(f"export {line}" for line in options.get("environment", ())),
        shlex.join(command),
        "rc=$?",
        f'echo $rc > {shlex.quote(str(jobs))}/exit-code.$SLURM_JOB_ID.tmp && '
        f'mv {shlex.quote(str(jobs))}/exit-code.$SLURM_JOB_ID.tmp {shlex.quote(str(jobs))}/exit-code.$SLURM_JOB_ID',
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


def submit_pipeline(sub: Submission, settings: GatewaySettings, project_dir: Path,
                    job_env: Mapping[str, str]) -> str:
    """Write and submit the driver job; returns its id."""
    from mltf_flow.atomic import write_atomic
    from mltf_flow.slurm.preflight import check
    from mltf_flow.slurm.sbatch import submit

    jobs = job_dir(settings, sub)
    jobs.mkdir(parents=True, exist_ok=True)
    script = render(sub, settings, project_dir)
    check(script, lambda answer: f"SLURM rejects the pipeline's driver job:\n    {answer}")
    path = jobs / "driver.sh"
    write_atomic(path, script)
    env = {**os.environ, "MLTF_FLOW_TRACKING_URI": settings.job_tracking_uri,
           "MLTF_FLOW_WORK_DIR": str(settings.state_path / "submissions" / sub.id / "work"),
           "MLFLOW_EXPERIMENT_NAME": str(sub.request.get("experiment") or "Default"),
           "TQDM_DISABLE": "1",  # MLflow's download bars, one line per refresh, in a log nobody watches live
           **job_env}
    env.pop("MLFLOW_TRACKING_URI", None)
    return submit(path, env)


def exit_code(settings: GatewaySettings, sub: Submission, job_id: str) -> int | None:
    """What the driver job wrote when the pipeline ended (None: it did not get there)."""
    path = job_dir(settings, sub) / f"exit-code.{job_id}"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def log_path(settings: GatewaySettings, sub: Submission) -> Path | None:
    return job_dir(settings, sub) / f"driver-{sub.job_ids[-1]}.log" if sub.job_ids else None
