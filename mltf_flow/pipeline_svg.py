"""The picture of an invocation: its DAG as a standalone SVG, kept as artifact ``mltf/pipeline.svg`` on the
parent run (:func:`attach_picture`), so the MLflow UI shows at a glance which steps ran, were cached or failed.

A hand-written SVG over a layered layout (:func:`mltf_flow.pipeline_graph.layers`: inputs left, the target
right): no graphviz binary is needed where the pipeline runs, and MLflow's artifact viewer shows SVG as an
image. Every text is XML-escaped (step names, dataset URIs and reasons are user data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from mltf_flow.pipeline_graph import CACHED, FAILED, FILLS, NOT_RUN, RAN, WILL_RUN, StepNode, layers
from mltf_flow.redaction import strip_credentials

if TYPE_CHECKING:
    from mltf_flow.config import Settings

#: Where the picture goes on the parent run.
PICTURE_ARTIFACT = "mltf/pipeline.svg"
_W, _H, _GAP_X, _GAP_Y, _PAD = 240, 64, 70, 24, 20
_log = logging.getLogger(__name__)


def _clip(text: str, chars: int = 34) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def render_svg(nodes: Sequence[StepNode], title: str) -> str:
    """The DAG as an SVG document: one box per node (name, state, short key), arrows from what a step needs."""
    columns = layers(nodes)
    rows = max((len(c) for c in columns), default=0)
    width = _PAD * 2 + len(columns) * _W + max(len(columns) - 1, 0) * _GAP_X
    height = _PAD * 2 + 28 + rows * _H + max(rows - 1, 0) * _GAP_Y
    where: dict[str, tuple[int, int]] = {}
    for i, column in enumerate(columns):
        for j, node in enumerate(column):
            where[node.id] = (_PAD + i * (_W + _GAP_X), _PAD + 28 + j * (_H + _GAP_Y))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f"<title>{escape(title)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{_PAD}" y="{_PAD + 12}" font-size="15" font-weight="bold">{escape(_clip(title, 80))}</text>',
    ]
    for node in nodes:
        x, y = where[node.id]
        for dep in node.upstream:
            if dep in where:
                dx, dy = where[dep]
                out.append(f'<line x1="{dx + _W}" y1="{dy + _H // 2}" x2="{x}" y2="{y + _H // 2}" stroke="#555" '
                           'stroke-width="1.5" marker-end="url(#arrow)"/>')
    for node in nodes:
        x, y = where[node.id]
        second = node.state + (f"  key {node.key[:12]}" if node.key else "")
        third = node.detail or (f"run {node.run_id}" if node.run_id else "")
        out.append(f'<g class="step" data-step={quoteattr(node.name)} data-state={quoteattr(node.state)}>')
        out.append(f'<rect x="{x}" y="{y}" width="{_W}" height="{_H}" rx="8" fill="{FILLS.get(node.state, "#fff")}" '
                   'stroke="#333"/>')
        out.append(f'<text x="{x + 10}" y="{y + 19}" font-weight="bold">{escape(_clip(node.name))}</text>')
        out.append(f'<text x="{x + 10}" y="{y + 38}">{escape(_clip(second))}</text>')
        if third:
            out.append(f'<text x="{x + 10}" y="{y + 55}" font-size="11" fill="#555">{escape(_clip(third, 40))}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def outcome_states(worker: Any) -> dict[str, str]:
    """Task id -> ran | cached | failed | not run, from Luigi's summary of the invocation's worker."""
    from luigi.execution_summary import _summary_dict

    summary = _summary_dict(worker)
    states: dict[str, str] = {}
    # Luigi's groups overlap (a failed task is also "ever_failed"): the outcome groups first.
    for status, state in (("completed", RAN), ("already_done", CACHED), ("failed", FAILED)):
        states.update((task.task_id, state) for task in summary.get(status, ()))
    for tasks in summary.values():
        for task in tasks:
            states.setdefault(task.task_id, NOT_RUN)
    return states


def attach_picture(settings: Settings, invocation_id: str, roots: Sequence[Any], outcome: Mapping[str, str]) -> None:
    """Draw the invocation's DAG with each step's outcome (Luigi's summary of it) and log it on its parent
    run(s); nothing when no step run was made (no parent run: everything was cached). A picture that cannot be
    made is a warning, never the invocation's failure."""
    from mltf_flow.pipeline_status import collect

    if not any(state in (RAN, FAILED) for state in outcome.values()):
        return  # no step run was made, so no parent run (and no mlflow import for a cached invocation)
    _attach(settings, invocation_id, roots, lambda tracker, parents: collect(roots, outcome=outcome, explain=False))


def attach_picture_from_store(settings: Settings, invocation_id: str, roots: Sequence[Any],
                              failed_steps: Collection[str]) -> None:
    """The same where no Luigi summary is at hand (``luigi --module``, at exit): a step whose run hangs under
    the invocation's parent run ran, one in ``failed_steps`` failed, the rest is as the store says (cached or
    not run). Only called once a parent run was made (:func:`mltf_flow.invocation.parent_made`)."""
    from mltf_flow.pipeline_status import collect

    def draw(tracker: Any, parents: list[str]) -> list[StepNode]:
        # By Luigi task id, not by the run each node finds: task objects of this (main) process may hold what
        # they found before forked Luigi workers ran them (``--workers N``).
        ran = _children(tracker.client, parents)

        def after(node: StepNode) -> StepNode:
            if node.id in ran:
                return replace(node, state=RAN, run_id=ran[node.id])
            if node.state != WILL_RUN:  # cached, or a dataset staged (or not)
                return node
            return replace(node, state=FAILED if node.name in failed_steps else NOT_RUN)

        return [after(node) for node in collect(roots, outcome={}, explain=False)]

    _attach(settings, invocation_id, roots, draw)


def _children(client: Any, parents: Sequence[str]) -> dict[str, str]:
    """Luigi task id -> run id of the runs under ``parents`` (the step runs this invocation made or reopened)."""
    from mltf_flow.tags import MLFLOW_PARENT_RUN_ID, TAG_TASK_ID

    found: dict[str, str] = {}
    for parent in parents:
        experiment = str(client.get_run(parent).info.experiment_id)
        for run in client.search_runs([experiment], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'", max_results=5000):
            task_id = run.data.tags.get(TAG_TASK_ID)
            if task_id:
                found[task_id] = str(run.info.run_id)
    return found


def _attach(settings: Settings, invocation_id: str, roots: Sequence[Any],
            draw: Callable[[Any, list[str]], list[StepNode]]) -> None:
    import tempfile
    from pathlib import Path

    from mltf_flow.tracking import Tracker

    try:
        tracker = Tracker(settings)
        parents = tracker.invocation_parents(invocation_id)
        if not parents:
            return
        nodes = draw(tracker, parents)
        title = f"{roots[0].pipeline_name()} · invocation {invocation_id}" if hasattr(roots[0], "pipeline_name") \
            else f"invocation {invocation_id}"
        svg = render_svg(nodes, title)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(PICTURE_ARTIFACT).name
            path.write_text(svg, encoding="utf-8")
            for parent in parents:
                tracker.log_artifact(parent, path, str(Path(PICTURE_ARTIFACT).parent))
    except Exception as exc:  # the picture is a view: the invocation's result stands without it
        _log.warning(f"warning: could not attach the pipeline picture ({type(exc).__name__}: "
                     f"{strip_credentials(str(exc))})")


__all__ = ["PICTURE_ARTIFACT", "attach_picture", "attach_picture_from_store", "outcome_states", "render_svg"]
