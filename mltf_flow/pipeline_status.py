"""What each step of a pipeline is, as nodes (:class:`mltf_flow.pipeline_graph.StepNode`) collected from its
Luigi tasks: before an invocation (``mltf-flow status``: cached, will run and why, failed last time) and after
one (the picture on the parent run: ran, cached, failed, not run). Before an invocation, a study
(:class:`mltf_flow.tune.step.TuneStep`) also says its run and its trials (:mod:`mltf_flow.tune.status`).

"Why" compares the step's key record now (:func:`mltf_flow.key_diff.key_record`) with the record of the most
recent complete run of the same pipeline and step (:class:`PreviousRuns`). A step whose key is not known yet
(an upstream step has no result) will run because that upstream will. Nothing here starts a cluster or
writes to the store: status only reads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.errors import MltfFlowError
from mltf_flow.key_diff import KEY_ARTIFACT, key_record, record_from_run, why_changed
from mltf_flow.pipeline_graph import CACHED, FAILED_LAST, STAGE_KIND, STAGED, STEP_KIND, TO_STAGE, WILL_RUN, StepNode
from mltf_flow.redaction import strip_credentials
from mltf_flow.tags import TAG_COMPLETE, TAG_PIPELINE, TAG_ROLE, TAG_STEP

if TYPE_CHECKING:
    import luigi

    from mltf_flow.config import Settings
    from mltf_flow.step_def import ResolvedStep

_log = logging.getLogger(__name__)


class PreviousRuns:
    """The most recent complete run of each step of a pipeline: one search per pipeline (a 1,000-step DAG
    is one query, not 1,000), each run's key record read when a step asks for it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._runs: dict[str, dict[str, Any]] = {}

    def find(self, pipeline: str, step: str) -> tuple[str, dict[str, Any]] | None:
        """(run id, key record) of the step's most recent complete run; None when there is none. A run made
        before key records existed is described by its tags and params."""
        if pipeline not in self._runs:
            self._runs[pipeline] = self._newest_per_step(pipeline)
        run = self._runs[pipeline].get(step)
        if run is None:
            return None
        run_id = str(run.info.run_id)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                record = json.loads(Path(self._client.download_artifacts(run_id, KEY_ARTIFACT, tmp)).read_text())
        except Exception:  # made before key records existed (MLflow raises its own errors for a missing artifact)
            record = record_from_run(dict(run.data.tags), dict(run.data.params))
        return run_id, record

    def _newest_per_step(self, pipeline: str) -> dict[str, Any]:
        from mltf_flow.run_index import run_index

        settings = self.settings
        experiment_id = run_index(settings.tracking_uri, settings.prefetch_limit).experiment_id(
            settings.experiment_for(pipeline))
        if experiment_id is None:
            return {}  # no mlflow import when nothing ran yet
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=settings.tracking_uri)
        runs = self._client.search_runs(
            [experiment_id], f"tags.`{TAG_PIPELINE}` = '{_quoted(pipeline)}' and tags.`{TAG_COMPLETE}` = 'true' "
            "and attributes.status = 'FINISHED'",
            max_results=max(settings.prefetch_limit, 1), order_by=["attributes.end_time DESC"],
        )
        newest: dict[str, Any] = {}
        for run in runs:
            if run.data.tags.get(TAG_ROLE) == "study":  # a study of the step, not a run of it: no key to compare
                continue
            newest.setdefault(run.data.tags.get(TAG_STEP, ""), run)
        return newest


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


class _Collector:
    """Walks a DAG of tasks once, from the targets down, one node per task (inputs first)."""

    def __init__(self, outcome: Mapping[str, str] | None, explain: bool) -> None:
        self.outcome = outcome
        self.explain = explain
        self.nodes: dict[str, StepNode] = {}
        self.previous: PreviousRuns | None = None

    def walk(self, roots: Sequence[luigi.Task]) -> list[StepNode]:
        from mltf_flow.plain_upstream import PlainUpstream

        order: list[tuple[Any, str]] = []
        seen: set[str] = set()
        stack: list[tuple[Any, str, bool]] = [(task, _name_of(task, ""), False) for task in roots]
        while stack:  # iterative: a 1,000-step chain is deeper than Python's recursion limit
            task, name, expanded = stack.pop()
            if expanded:
                order.append((task, name))
                continue
            if task.task_id in seen:
                continue
            seen.add(task.task_id)
            stack.append((task, name, True))
            for req_name, dep in _requirements(task).items():
                dep_task = dep.task if isinstance(dep, PlainUpstream) else dep
                stack.append((dep_task, _name_of(dep_task, req_name), False))
        for task, name in order:
            node = self.node(task, name)
            self.nodes[node.id] = node
        return list(self.nodes.values())

    def node(self, task: Any, name: str) -> StepNode:
        upstream = tuple(_task_of(dep).task_id for dep in _requirements(task).values())
        if _kind(task) == STEP_KIND:
            return self.step_node(task, upstream)
        if _kind(task) == STAGE_KIND:
            manifest = task.output().read()
            state = STAGED if manifest else TO_STAGE
            uri = strip_credentials(task.uri().canonical)
            detail = (f"{len(manifest['files'])} file(s)  " if manifest else "") + uri
            return StepNode(task.task_id, name, self._after(task, state), detail=detail, upstream=upstream,
                            kind="stage")
        state = CACHED if task.complete() else WILL_RUN
        return StepNode(task.task_id, name, self._after(task, state), upstream=upstream, kind="task")

    def _after(self, task: Any, before: str) -> str:
        return before if self.outcome is None else self.outcome.get(task.task_id, before)

    def step_node(self, step: Any, upstream: tuple[str, ...]) -> StepNode:
        node = self._step_node(step, upstream)
        if self.outcome is None and _is_study(step):
            from mltf_flow.tune.status import study_notes

            try:
                notes = study_notes(step, node.key)
            except MltfFlowError as exc:  # say what is known, never fail the picture
                notes = (f"study: not shown ({exc})",)
            node = dataclasses.replace(node, name=f"{node.name} (study)", kind="study", notes=notes)
        return node

    def _step_node(self, step: Any, upstream: tuple[str, ...]) -> StepNode:
        name = step.step_name()
        try:
            key = step.cache_key()
            ref = step.output().run_ref() if key else None
        except MltfFlowError as exc:  # after a failed invocation: say what is known, never fail the picture
            _log.debug(f"step '{name}': no key ({exc})")
            key, ref = None, None
        if self.outcome is not None:
            return StepNode(step.task_id, name, self._after(step, CACHED if ref else WILL_RUN), key,
                            ref.run_id if ref else None, upstream=upstream)
        if ref is not None:
            return StepNode(step.task_id, name, CACHED, key, ref.run_id, upstream=upstream)
        state = WILL_RUN
        settings = step.settings()
        if key is not None:
            from mltf_flow.run_index import run_index

            failed = run_index(settings.tracking_uri, settings.prefetch_limit).find_with_status(
                settings.experiment_for(step.pipeline_name()), key, "FAILED")
            state = FAILED_LAST if failed else WILL_RUN
        # A study with a key: the step's last run is no study to compare with (its notes say what it did).
        if not self.explain or (key is not None and _is_study(step)):
            return StepNode(step.task_id, name, state, key, upstream=upstream)
        reasons, detail = self.reasons(step, key, settings)
        return StepNode(step.task_id, name, state, key, None, tuple(reasons), detail, upstream)

    def reasons(self, step: Any, key: str | None, settings: Settings) -> tuple[list[str], str]:
        """Why ``step`` will run, and which earlier run that was found by comparing with."""
        if key is None:
            waiting = [(req, dep) for req, dep in _requirements(step).items() if dep.upstream_key() is None]
            reasons = [f"upstream {self._label(req, dep)} will {'be staged' if _is_stage(dep) else 'rerun'}"
                       for req, dep in waiting]
            found = self._previous(settings).find(step.pipeline_name(), step.step_name())
            if found is None:
                return reasons, ""
            return reasons + why_changed(found[1], key_record(_own_part(step)), own_only=True), \
                f"vs run {found[0][:8]}…"
        found = self._previous(settings).find(step.pipeline_name(), step.step_name())
        if found is None:
            return why_changed(None, {}), ""
        run_id, record = found
        value = step.describe()
        assert value is not None  # key is not None
        return why_changed(record, key_record(value)), f"vs run {run_id[:8]}…"

    def _previous(self, settings: Settings) -> PreviousRuns:
        if self.previous is None:
            self.previous = PreviousRuns(settings)
        return self.previous

    def _label(self, req: str, dep: Any) -> str:
        task = _task_of(dep)
        node = self.nodes.get(task.task_id)
        return node.name if node else _name_of(task, req)


def _own_part(step: Any) -> ResolvedStep:
    """The step as a value without what its upstream steps give (not known before they ran): its own
    ingredients, for :func:`mltf_flow.key_diff.why_changed` with ``own_only``."""
    from mltf_flow.step_def import ResolvedStep, ddp_world_size

    definition, profile = step.definition(), step.cluster_profile()
    world_size = ddp_world_size(definition, profile, getattr(step, "world_size", None))
    return ResolvedStep(definition=definition, project=step.project(), params=dict(step.params()), inputs={},
                        upstream={}, datasets=(), code=step.code_version(), environment=step.environment(),
                        profile=profile, world_size=world_size)


def _kind(task: Any) -> str:
    """``step`` (an MLflowStep), ``stage`` (a StageStep) or ``task``: told by the class attribute ``mltf_kind``,
    not by importing those classes (they report at exit through this module: the import would be a cycle)."""
    return str(getattr(type(task), "mltf_kind", "task"))


def _is_study(task: Any) -> bool:
    """A study of a step (mltf_flow.tune.step.TuneStep; not imported: status of a pipeline without a study never
    loads the tune package)."""
    return callable(getattr(task, "study_spec", None))


def _requirements(task: Any) -> Mapping[str, Any]:
    return dict(task.requirements()) if _kind(task) == STEP_KIND else {}


def _task_of(dep: Any) -> Any:
    from mltf_flow.plain_upstream import PlainUpstream

    return dep.task if isinstance(dep, PlainUpstream) else dep


def _is_stage(dep: Any) -> bool:
    return _kind(dep) == STAGE_KIND


def _name_of(task: Any, requirement: str) -> str:
    if _kind(task) == STEP_KIND:
        return str(task.step_name())
    return requirement or str(task.task_family)


def collect(roots: Sequence[luigi.Task], *, outcome: Mapping[str, str] | None = None,
            explain: bool = True) -> list[StepNode]:
    """The nodes of the DAG below ``roots``, inputs first. Without ``outcome``: states before a run, with
    reasons when ``explain``; with it (task id -> ran | cached | failed | not run): states after a run."""
    collector = _Collector(outcome, explain)
    return collector.walk(roots)


__all__ = ["PreviousRuns", "collect"]
