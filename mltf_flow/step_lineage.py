"""What a step run shows people in the MLflow UI: its name, its description and its inputs as MLflow datasets.

The cache key and the ``mltf.*`` tags are for machines; this is the same lineage for a person browsing the
runs table: :func:`step_run_name` when the run is created, :func:`record` once it exists (the diff of
uncommitted code as artifact ``mltf/uncommitted.diff``, the datasets it read in the Dataset column, the
Markdown description) and again when it ends (SLURM jobs that joined, the outcome). The text itself is
:mod:`mltf_flow.run_description`'s.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.cache_key import git_diff, git_state
from mltf_flow.config.profiles import SlurmProfile
from mltf_flow.lineage_view import LoggedDataset, log_datasets
from mltf_flow.redaction import strip_credentials
from mltf_flow.run_description import (
    DatasetFacts,
    StepFacts,
    UpstreamFacts,
    changed_params,
    run_name,
    step_description,
)
from mltf_flow.tags import MLFLOW_NOTE, MLFLOW_RUN_NAME, TAG_INPUTS

if TYPE_CHECKING:
    from mltf_flow.step_def import ResolvedStep
    from mltf_flow.step_run import Cluster, OpenRun, Plan
    from mltf_flow.tracking import Tracker

_log = logging.getLogger(__name__)
DIFF_ARTIFACT = "mltf/uncommitted.diff"
MANIFESTS = "mltf/inputs"


def changed(step: ResolvedStep) -> dict[str, str]:
    """The step's parameters that differ from its entry point's defaults."""
    defaults = {name: p.default for name, p in step.entry.parameters.items() if p.default is not None}
    return changed_params(step.params, defaults)


def step_run_name(step: ResolvedStep) -> str:
    return run_name(step.name, changed(step))


def _git_paths(step: ResolvedStep) -> list[str]:
    # "auto" is no path for git: ask about the project directory then (its untracked outputs count as dirty).
    paths = step.definition.code_paths
    return ["."] if "auto" in paths else [p for p in paths if not p.startswith("!")]


def git_of(step: ResolvedStep) -> tuple[str | None, bool]:
    """The commit of the step's code and whether it has uncommitted changes ((None, False) outside git)."""
    return git_state(step.project.root, _git_paths(step)) if step.code.in_git else (None, False)


def _upstream(plan: Plan, tracker: Tracker) -> tuple[list[UpstreamFacts], list[DatasetFacts]]:
    """The upstream runs, what was read from each, and the datasets they read (found in their tags)."""
    read: dict[str, list[str]] = {}
    for ref in plan.step.inputs.values():
        read.setdefault(ref.requirement, []).append(ref.spec)
    ups, datasets = [], []
    for requirement, run_id in sorted(plan.upstream_runs.items()):
        experiment_id, _, tags = tracker.run_place(run_id)
        ups.append(UpstreamFacts(requirement, experiment_id, run_id, tags.get(MLFLOW_RUN_NAME, ""),
                                 tuple(read.get(requirement, ()))))
        for data in _json_list(tags.get(TAG_INPUTS, "")):
            manifest = (experiment_id, run_id, f"{MANIFESTS}/{data['manifest']}") if data.get("manifest") else None
            datasets.append(DatasetFacts(str(data.get("uri", "")), str(data.get("digest", "")), manifest,
                                         via=requirement))
    return ups, datasets


def _json_list(text: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def own_datasets(plan: Plan) -> list[dict[str, str]]:
    """The datasets this step reads itself (URI, digest, and the name its manifest is logged under)."""
    by_uri = {}
    for requirement, path in plan.manifests.items():
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        by_uri[str(manifest.get("digest", ""))] = f"{requirement}.manifest.json"
    return [{**dict(d), **({"manifest": by_uri[d["digest"]]} if d.get("digest") in by_uri else {})}
            for d in plan.step.datasets]


def _slurm_jobs(plan: Plan, cluster: Cluster, job_ids: tuple[str, ...]) -> list[tuple[str, str]]:
    """Each worker job and its log, where dask-jobqueue has SLURM write it (``<job name>-<id>.out`` in the
    profile's log directory, by default the work dir's, as :mod:`mltf_flow.clusters.keeper` sets it)."""
    profile = cluster.profile
    if not isinstance(profile, SlurmProfile):
        return []
    where = (Path(profile.log_directory).expanduser() if profile.log_directory
             else plan.settings.work_dir / "slurm-logs" / profile.name)
    return [(job, str(where / f"{profile.job_name}-{job}.out")) for job in job_ids]


def _logged_datasets(plan: Plan, ups: list[UpstreamFacts], mine: list[dict[str, str]],
                     upstream_data: list[DatasetFacts]) -> list[LoggedDataset]:
    """Inputs for MLflow's Dataset column: the datasets the step reads, the upstream artifacts it reads
    (named after the artifact, digest = the upstream run), and the datasets those were made from."""
    logged = [LoggedDataset(_dataset_name(d["uri"]), d["digest"], d["uri"], "dataset") for d in mine]
    for up in ups:
        for artifact in up.artifacts:
            logged.append(LoggedDataset(Path(artifact).name or artifact, up.run_id, f"runs:/{up.run_id}/{artifact}",
                                        f"upstream {up.requirement}"))
    seen = {d["uri"] for d in mine}
    for data in upstream_data:
        if data.uri and data.uri not in seen:
            seen.add(data.uri)
            logged.append(LoggedDataset(_dataset_name(data.uri), data.digest, data.uri, f"source via {data.via}"))
    return logged


def _dataset_name(uri: str) -> str:
    """``file:///data/jet_sample`` -> ``jet_sample``; ``rucio://scope:name`` -> ``scope:name``."""
    rest = uri.split("://", 1)[-1]
    return rest.rstrip("/").rsplit("/", 1)[-1] or uri


def record(plan: Plan, cluster: Cluster, run: OpenRun, *, job_ids: tuple[str, ...] | None = None,
           outcome: str = "", first: bool = True) -> None:
    """Write the run's description (and, the first time, its datasets and the diff of uncommitted code).
    What people see is never worth failing a step: an error here is logged and the step goes on."""
    tags = described(plan, cluster, run, job_ids=job_ids, outcome=outcome, first=first)
    if tags:
        try:
            run.tracker.set_tags(run.run_id, tags)
        except Exception as exc:
            _warn(run, exc)


def described(plan: Plan, cluster: Cluster, run: OpenRun, *, job_ids: tuple[str, ...] | None = None,
              outcome: str = "", first: bool = True) -> dict[str, str]:
    """:func:`record` but for the description itself, returned as tags for the caller's own request (a trial
    sends it with its parameters); empty when it could not be made (logged)."""
    try:
        return _record(plan, cluster, run, job_ids=cluster.job_ids if job_ids is None else job_ids, outcome=outcome,
                       first=first)
    except Exception as exc:
        _warn(run, exc)
        return {}


def _warn(run: OpenRun, exc: Exception) -> None:
    _log.warning(f"warning: could not write the description of MLflow run {run.run_id} ({type(exc).__name__}: "
                 f"{strip_credentials(str(exc))})")


def _record(plan: Plan, cluster: Cluster, run: OpenRun, *, job_ids: tuple[str, ...], outcome: str,
            first: bool) -> dict[str, str]:
    step, tracker = plan.step, run.tracker
    ups, upstream_data = _upstream(plan, tracker)
    mine = own_datasets(plan)
    commit, dirty = plan.git if plan.git is not None else git_of(step)
    diff_artifact = DIFF_ARTIFACT if dirty else None
    if first:
        if dirty:
            diff = git_diff(step.project.root, _git_paths(step))
            path = plan.settings.work_dir / "storage" / run.run_id / "uncommitted.diff"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(diff or "(no changes to tracked files: the uncommitted files are untracked)\n")
            tracker.log_artifact(run.run_id, path, str(Path(DIFF_ARTIFACT).parent))
        logged = _logged_datasets(plan, ups, mine, upstream_data)
        if logged:
            log_datasets(tracker, run.run_id, logged)
    datasets = [DatasetFacts(d["uri"], d["digest"], (run.experiment_id, run.run_id, f"{MANIFESTS}/{d['manifest']}")
                             if d.get("manifest") else None) for d in mine] + upstream_data
    environment = step.environment
    facts = StepFacts(
        experiment_id=run.experiment_id, run_id=run.run_id, pipeline=step.pipeline, step=step.name,
        entry_point=step.definition.entry_point, cache_key=step.key, parent_id=run.parent_id or None,
        changed=changed(step), upstream=ups, datasets=datasets, commit=commit, dirty=dirty,
        diff_artifact=diff_artifact, env_manager=environment.manager, env_hash=environment.key(),
        env_prefix=str(environment.prefix) if environment.prefix is not None else None,
        profile=cluster.profile.name, dashboard=cluster.dashboard, slurm_jobs=_slurm_jobs(plan, cluster, job_ids),
        outcome=outcome,
    )
    return {MLFLOW_NOTE: step_description(facts)}


__all__ = ["DIFF_ARTIFACT", "changed", "described", "git_of", "own_datasets", "record", "step_run_name"]
