"""What a run says about itself in the MLflow UI: its name and its description.

A run's *name* tells runs apart in the runs table without the column chooser: a step run is named after its
step and the parameters that differ from the entry point's defaults (``features (max_constituents=32)``), the
parent run of an invocation after its pipeline, the step it ran for and what differs from the defaults there
(``jet_tagging: train (epochs=12)``). Names stay short: at most :data:`SHOWN_PARAMS` parameters, then
``+N more``, and never longer than :data:`MAX_NAME` characters.

A run's *description* is the Markdown MLflow shows on the run's page (tag ``mlflow.note.content``): the
lineage as links that work inside the MLflow UI (``#/experiments/<id>/runs/<id>``): upstream runs, datasets
with their manifest digests, the code commit (and the diff of uncommitted changes), the environment, SLURM
jobs with their logs, the Dask dashboard; a parent run's lists the steps it ran and those it reused.

Pure functions from values to text: the callers (:mod:`mltf_flow.step_run`, :mod:`mltf_flow.tracking`,
:mod:`mltf_flow.staging.step`) gather the facts and write the tags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mltf_flow.redaction import shown_value

#: Parameters shown in a run name before ``+N more``.
SHOWN_PARAMS = 3
#: The longest run name we write (MLflow's runs table cuts names far shorter than its 250-character limit).
MAX_NAME = 90
#: The longest parameter value shown in a name.
MAX_VALUE = 24


def changed_params(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, str]:
    """The parameters whose value differs from the default (a parameter without default always counts),
    as text, in the order of ``params``; a secret's value as ``***`` and a URL's without its password (names and
    descriptions are tags anyone who reads the experiment sees)."""
    return {name: shown_value(name, _text(value)) for name, value in params.items()
            if name not in defaults or _text(defaults[name]) != _text(value)}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def _short(value: str) -> str:
    return value if len(value) <= MAX_VALUE else value[: MAX_VALUE - 1] + "…"


def run_name(title: str, changed: Mapping[str, str]) -> str:
    """``title (a=1, b=2, +3 more)``: the changed parameters, capped (see the module docstring)."""
    shown = [f"{name}={_short(value)}" for name, value in list(changed.items())[:SHOWN_PARAMS]]
    more = len(changed) - len(shown)
    if more:
        shown.append(f"+{more} more")
    name = f"{title} ({', '.join(shown)})" if shown else title
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def parent_name(pipeline: str, target: str, changed: Mapping[str, Mapping[str, str]]) -> str:
    """The parent run's name: ``pipeline: target (...)``, the target's own parameters unprefixed and other
    steps' as ``step.param``."""
    flat = dict(changed.get(target, {}))
    for step, params in changed.items():
        if step != target:
            flat.update({f"{step}.{name}": value for name, value in params.items()})
    return run_name(f"{pipeline}: {target}", flat)


#: The MLflow UI (3.17) shows an experiment as GenAI app or as model training after a switch of its own (this
#: URL parameter, else the browser's last choice, else GenAI): our links ask for the training view, where
#: runs, their datasets and parameters are.
TRAINING_VIEW = "workflowType=machine_learning"


def experiment_link(experiment_id: str) -> str:
    """A link to an experiment's runs table in the MLflow UI (relative: it works on any host)."""
    return f"#/experiments/{experiment_id}?{TRAINING_VIEW}"


def run_link(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A link to a run's page (or one of its artifacts) that works inside the MLflow UI, on any host."""
    link = f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"{link}/artifacts/{artifact}?{TRAINING_VIEW}" if artifact else f"{link}?{TRAINING_VIEW}"


@dataclass(frozen=True)
class DatasetFacts:
    """A dataset a run read: its URI, manifest digest and where its manifest is kept (a run's artifact)."""

    uri: str
    digest: str
    #: (experiment id, run id, artifact path) of the manifest; None when no run holds it.
    manifest: tuple[str, str, str] | None = None
    #: The step that read it, when it is not this run (a dataset an upstream step read).
    via: str = ""


@dataclass(frozen=True)
class UpstreamFacts:
    """An upstream step's run and what this run read from it."""

    requirement: str
    experiment_id: str
    run_id: str
    name: str = ""
    #: Artifacts of that run fed into this run's parameters (``features.mltft``).
    artifacts: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepFacts:
    """Everything a step run's description says (values gathered by the caller)."""

    experiment_id: str
    run_id: str
    pipeline: str
    step: str
    entry_point: str
    cache_key: str
    parent_id: str | None = None
    changed: Mapping[str, str] = field(default_factory=dict)
    upstream: Sequence[UpstreamFacts] = ()
    datasets: Sequence[DatasetFacts] = ()
    commit: str | None = None
    dirty: bool = False
    #: Artifact path of the logged diff of uncommitted changes.
    diff_artifact: str | None = None
    env_manager: str = ""
    env_hash: str = ""
    env_prefix: str | None = None
    profile: str = ""
    dashboard: str = ""
    #: (SLURM job id, its log file) of the Dask workers the step used.
    slurm_jobs: Sequence[tuple[str, str]] = ()
    #: How it ended, once it has ("command exited 0 after 12.3 s").
    outcome: str = ""


def step_description(facts: StepFacts) -> str:
    """The Markdown description of a step run (see the module docstring)."""
    eid = facts.experiment_id
    lines = [f"**{facts.pipeline}** step **{facts.step}** (entry point `{facts.entry_point}`), "
             f"cache key `{facts.cache_key[:16]}`"]
    if facts.parent_id:
        lines.append(f"in [pipeline run]({run_link(eid, facts.parent_id)})")
    if facts.changed:
        lines += ["", "**Parameters changed from the defaults:** "
                  + ", ".join(f"`{k}={v}`" for k, v in facts.changed.items())]
    lines += ["", "### Inputs"]
    if not facts.upstream and not facts.datasets:
        lines.append("- none")
    for up in facts.upstream:
        read = f" (read: {', '.join(f'`{a}`' for a in up.artifacts)})" if up.artifacts else ""
        label = up.name or up.requirement
        lines.append(f"- upstream run **{up.requirement}**: [{label}]({run_link(up.experiment_id, up.run_id)})"
                     f"{read}")
    for data in facts.datasets:
        via = f" (read by {data.via})" if data.via else ""
        manifest = ""
        if data.manifest is not None:
            exp, run, path = data.manifest
            manifest = f", [manifest]({run_link(exp, run, path)})"
        lines.append(f"- dataset `{data.uri}`{via}: manifest digest `{data.digest[:16]}`{manifest}")
    lines += ["", "### Code and environment"]
    if facts.commit:
        code = f"- code: commit `{facts.commit[:12]}`"
        if facts.dirty:
            code += " + uncommitted changes"
            if facts.diff_artifact:
                code += f" ([diff]({run_link(eid, facts.run_id, facts.diff_artifact)}))"
        lines.append(code)
    else:
        lines.append("- code: not in git (its files are hashed into the cache key)")
    where = f" at `{facts.env_prefix}`" if facts.env_prefix else ""
    lines.append(f"- environment: {facts.env_manager or 'local'}, hash `{facts.env_hash[:12]}`{where}")
    lines += ["", "### Where it ran"]
    lines.append(f"- profile `{facts.profile}`" if facts.profile else "- profile: default")
    if facts.dashboard:
        lines.append(f"- Dask dashboard: [{facts.dashboard}]({facts.dashboard})")
    for job, log in facts.slurm_jobs:
        lines.append(f"- SLURM job {job}: log `{log}`")
    if facts.outcome:
        lines += ["", f"**Outcome:** {facts.outcome}"]
    return "\n".join(lines) + "\n"


def stage_description(uri: str, digest: str, files: int, *, rule_id: str = "", rse_expression: str = "") -> str:
    """The Markdown description of a staging run (``rucio://`` datasets)."""
    lines = [f"Staging of dataset `{uri}`", "", f"- manifest digest `{digest[:16]}`, {files} files "
             "(manifest: artifact `mltf/manifest.json`)"]
    if rule_id:
        lines.append(f"- Rucio rule `{rule_id}`" + (f" to `{rse_expression}`" if rse_expression else ""))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ChildFacts:
    """A step run of a pipeline invocation, as its parent lists it."""

    step: str
    run_id: str
    name: str


@dataclass(frozen=True)
class ParentFacts:
    """Everything a parent run's description says."""

    experiment_id: str
    pipeline: str
    target: str
    ran: Sequence[ChildFacts] = ()
    #: step -> run id of the upstream runs this invocation found complete and reused.
    reused: Mapping[str, str] = field(default_factory=dict)
    failed: Sequence[str] = ()


def parent_description(facts: ParentFacts) -> str:
    """The Markdown description of an invocation's parent run."""
    eid = facts.experiment_id
    lines = [f"**{facts.pipeline}**: pipeline run for step **{facts.target}**", "", "### Steps run"]
    lines += [f"- **{c.step}**: [{c.name}]({run_link(eid, c.run_id)})" for c in facts.ran]
    if not facts.ran:
        lines.append("- none")
    if facts.reused:
        lines += ["", "### Steps reused from earlier runs (cached)"]
        lines += [f"- **{step}**: [run {run_id[:8]}]({run_link(eid, run_id)})"
                  for step, run_id in sorted(facts.reused.items())]
    if facts.failed:
        lines += ["", f"**Failed:** {', '.join(facts.failed)}"]
    return "\n".join(lines) + "\n"


__all__ = ["MAX_NAME", "SHOWN_PARAMS", "TRAINING_VIEW", "ChildFacts", "DatasetFacts", "ParentFacts", "StepFacts",
           "UpstreamFacts", "changed_params", "experiment_link", "parent_description", "parent_name", "run_link",
           "run_name", "stage_description", "step_description"]
