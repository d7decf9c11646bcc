"""A project submission's job: ``mlflow run --backend mltf`` done by the gateway for a user.

The gateway plans and submits the job as the backend does for a user on the login node
(:mod:`mltf_flow.backend.submit`), with three differences:

* the run is created first, by the gateway in its MLflow (``mlflow.user`` and ``mltf.user`` the token's user,
  ``mltf.gateway.submission`` the submission), and its id recorded; the job then reports through the
  gateway's MLflow proxy with a job credential, never with the user's token;
* the job's name is the submission's (``mltf-gw-<id>``), and its comment says who asked, so a restarted
  gateway finds a job it submitted but had not recorded (:func:`find_job`) and submits nothing twice;
* only the backend-config keys a user may set are taken from the request; the facility's (job directory,
  interpreter) come from the gateway's configuration.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.errors import RequestRejected
from mltf_flow.gateway.settings import USER_BACKEND_KEYS
from mltf_flow.tags import (
    MLFLOW_USER,
    TAG_GATEWAY_SUBMISSION,
    TAG_GATEWAY_URL,
    TAG_SLURM_JOB_ID,
    TAG_SLURM_JOB_IDS,
    TAG_USER,
)

if TYPE_CHECKING:
    from mltf_flow.gateway.settings import GatewaySettings
    from mltf_flow.gateway.store import Submission


def check_backend_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The user's backend config, with only the keys a gateway user may set (a typo is told apart from a key
    that is the facility's)."""
    from mltf_flow.config.backend import KEYS
    from mltf_flow.config.schema import did_you_mean

    given = [k for k in raw if k not in USER_BACKEND_KEYS and k != "ENV_MANAGER"]
    theirs = sorted(k for k in given if k in KEYS)
    unknown = sorted(k for k in given if k not in KEYS)
    allowed = sorted(USER_BACKEND_KEYS)
    if unknown:
        raise RequestRejected(f"backend config: unknown key(s) {', '.join(unknown)}; you may set: "
                              f"{', '.join(allowed)}.{did_you_mean(unknown, allowed)}", status=422)
    if theirs:
        raise RequestRejected(
            f"backend config key(s) {', '.join(theirs)} are set by the facility on the gateway, not by a "
            f"submission; you may set: {', '.join(allowed)}.", status=422)
    return dict(raw)


def check_request(settings: GatewaySettings, project_dir: Path, entry_point: str, params: Mapping[str, Any],
                  backend_config: Mapping[str, Any]) -> None:
    """What the backend would refuse later, refused now: the entry point's parameters (typed; ``rucio://`` values
    are the hooks' to resolve) and the merged backend config (a profile that does not exist, a bad time)."""
    from mltf_flow.backend.config import parse_backend_config
    from mltf_flow.config import load_settings
    from mltf_flow.mlproject import read_project

    ep = read_project(project_dir).entry_point(entry_point)
    staged = [k for k, v in params.items() if str(v).startswith("rucio://")]
    ep.normalise({k: v for k, v in params.items() if k not in staged}, allow_extra=True, filled_later=staged)
    parse_backend_config({**settings.backend, **check_backend_config(backend_config)}, load_settings(),
                         source="backend config (the gateway's defaults and yours)")


def job_comment(sub: Submission) -> str:
    """``mltf-gateway:user=alice:submission=<id>`` (``squeue -o %k`` shows it; no spaces, no quotes)."""
    user = re.sub(r"[^A-Za-z0-9@._-]", "_", sub.user)
    return f"mltf-gateway:user={user}:submission={sub.id}"


def identity_tags(sub: Submission, settings: GatewaySettings) -> dict[str, str]:
    return {MLFLOW_USER: sub.user, TAG_USER: sub.user, TAG_GATEWAY_SUBMISSION: sub.id,
            TAG_GATEWAY_URL: settings.public_url}


def experiment_id(client: Any, name: str | None) -> str:
    """The experiment a submission's runs go to (created when missing; MLflow's default one without a name)."""
    if not name:
        return "0"
    found = client.get_experiment_by_name(name)
    return str(found.experiment_id) if found is not None else str(client.create_experiment(name))


def find_job(name: str, job_dir: Path | None = None) -> str | None:
    """The id of a job named ``name`` that SLURM still knows (any state), else the id a job of ours wrote
    into ``job_dir`` when it started (SLURM forgets ended jobs quickly; the marker stays)."""
    squeue = shutil.which("squeue")
    if squeue is not None:
        proc = subprocess.run([squeue, "-h", "--states=all", "-n", name, "-o", "%i"], capture_output=True,
                              text=True, timeout=60, check=False)
        ids = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode == 0 and ids:
            return sorted(ids, key=int)[0]
    if job_dir is not None:
        markers = sorted(job_dir.glob("started.*"))
        if markers:
            return markers[0].name.split(".", 1)[1]
    return None


def own_run(client: Any, sub: Submission, settings: GatewaySettings) -> tuple[str, str]:
    """(run id, experiment id) of the submission's run, SCHEDULED until its job starts: the one a previous
    gateway process created (found by its tag), else a new one."""
    exp = str(sub.request.get("experiment_id") or experiment_id(client, sub.request.get("experiment")))
    found = client.search_runs([exp], filter_string=f"tags.`{TAG_GATEWAY_SUBMISSION}` = '{sub.id}'",
                               max_results=1)
    if found:
        run = found[0]
        tags = run.data.tags
        if run.info.status == "RUNNING" and not (tags.get(TAG_SLURM_JOB_IDS) or tags.get(TAG_SLURM_JOB_ID)):
            client.update_run(run.info.run_id, status="SCHEDULED")  # created, then the gateway stopped
        return str(run.info.run_id), exp
    run = client.create_run(exp, tags=identity_tags(sub, settings), run_name=sub.request.get("entry_point"))
    client.update_run(run.info.run_id, status="SCHEDULED")  # MLflow creates runs RUNNING; no job runs it yet
    return str(run.info.run_id), exp


def submit_project(sub: Submission, settings: GatewaySettings, project_dir: Path, params: Mapping[str, Any],
                   job_env: Mapping[str, str]) -> str:
    """Plan and submit the submission's job for its recorded run; returns the job id."""
    from mltf_flow.backend.submit import plan_job, submit_job
    from mltf_flow.config import load_settings

    assert sub.run_id and sub.experiment_id
    request = sub.request
    config = {**settings.backend, **check_backend_config(request.get("backend_config") or {}),
              "run_id": sub.run_id, "job_name": sub.job_name,
              "extra_directives": [*settings.backend.get("extra_directives", ()),
                                   f"--comment={job_comment(sub)}"]}
    config.setdefault("job_dir", str(settings.state_path / "jobs"))
    config.setdefault("ENV_MANAGER", request.get("env_manager") or "local")
    mltf_settings = load_settings(tracking_uri=settings.mlflow_upstream)
    plan = plan_job(str(project_dir), str(request.get("entry_point") or "main"), dict(params), None, config,
                    settings.mlflow_upstream, sub.experiment_id, mltf_settings)
    plan.job_tracking_uri = settings.job_tracking_uri
    plan.tags.update(identity_tags(sub, settings))
    plan.job_env = dict(job_env)
    submitted = submit_job(plan)
    return str(submitted.job_id)


def recorded_job(client: Any, run_id: str) -> tuple[str | None, bool]:
    """The job id on the run, and whether the backend recorded it (after sbatch answered) or only the job's
    wrapper did (when it started: the gateway stopped between the two)."""
    tags = client.get_run(run_id).data.tags
    ids = [j for j in tags.get(TAG_SLURM_JOB_IDS, "").split(",") if j]
    if ids:
        return ids[-1], True
    return tags.get(TAG_SLURM_JOB_ID) or None, False
