"""A pipeline's DAG as values, and how it is drawn in the terminal.

Each step of an invocation becomes a :class:`StepNode` (its state, key, the run found for the key and, for a
step that will run, why: :mod:`mltf_flow.key_diff`); :func:`layers` orders them left to right for pictures
(:mod:`mltf_flow.pipeline_svg`), :func:`status_lines` and :func:`status_tree` draw them for
``mltf-flow status`` (plain lines, and ``--graph``: a rich tree from the target down to its inputs). The
nodes are collected from Luigi tasks by :mod:`mltf_flow.pipeline_status`; nothing here touches a task, a
store or mlflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.tree import Tree

#: States of a step before an invocation (``mltf-flow status``) ...
CACHED, WILL_RUN, FAILED_LAST = "cached", "will run", "failed last time"
STAGED, TO_STAGE = "staged", "to stage"
#: ... and after one (the picture on the parent run).
RAN, FAILED, NOT_RUN = "ran", "failed", "not run"
#: What a task is to the views (class attribute ``mltf_kind`` of MLflowStep and StageStep).
STEP_KIND, STAGE_KIND = "step", "stage"
#: Colour per state, for the terminal (rich styles) and the SVG picture (fill colours).
STYLES = {CACHED: "green", STAGED: "green", RAN: "cyan", WILL_RUN: "yellow", TO_STAGE: "yellow",
          FAILED_LAST: "red", FAILED: "red", NOT_RUN: "dim"}
FILLS = {CACHED: "#d9f2d9", STAGED: "#d9f2d9", RAN: "#d6ecfa", WILL_RUN: "#fff2c4", TO_STAGE: "#fff2c4",
         FAILED_LAST: "#f9d3d3", FAILED: "#f9d3d3", NOT_RUN: "#eeeeee"}


@dataclass(frozen=True)
class StepNode:
    """One step (or staged dataset, or plain Luigi task) of a pipeline."""

    #: Unique within the DAG (the Luigi task id).
    id: str
    name: str
    state: str
    #: The step's cache key; None while an upstream result is missing (it is known once that ran).
    key: str | None = None
    #: The run found for the key (or the one that ran).
    run_id: str | None = None
    #: Why the step will run (empty when it will not).
    reasons: tuple[str, ...] = ()
    #: What else identifies it: a dataset's URI and file count.
    detail: str = ""
    #: Ids of the nodes this one needs.
    upstream: tuple[str, ...] = ()
    #: "step" (an MLflow step: it has a key), "study" (a study of a step: it has a key), "stage" (a dataset) or
    #: "task" (a plain Luigi task).
    kind: str = "step"
    #: More to say below its line: a study's run and trials (mltf_flow.tune.status).
    notes: tuple[str, ...] = ()

    @property
    def short_key(self) -> str:
        return f"{self.key[:8]}…" if self.key else "known after upstream"

    def summary(self) -> str:
        """``cached  run 3f2a1b0c… (key 9c1e4d2a…)``: the state and what it was found for."""
        parts = [self.state]
        if self.run_id:
            parts.append(f"run {self.run_id[:8]}…")
        if self.kind in ("step", "study"):
            parts.append(f"(key {self.short_key})")
        if self.detail:
            parts.append(self.detail)
        return "  ".join(parts)


def layers(nodes: Sequence[StepNode]) -> list[list[StepNode]]:
    """The nodes in columns: each after every node it needs (column = longest path from an input)."""
    by_id = {node.id: node for node in nodes}
    depth: dict[str, int] = {}
    for node in nodes:  # iterative: a 1,000-step chain is deeper than Python's recursion limit
        stack = [(node.id, False)]
        while stack:
            ident, expanded = stack.pop()
            if ident in depth:
                continue
            deps = [d for d in by_id[ident].upstream if d in by_id]
            if expanded or all(d in depth for d in deps):
                depth[ident] = 1 + max((depth[d] for d in deps), default=-1)
                continue
            stack.append((ident, True))
            stack.extend((d, False) for d in deps if d not in depth)
    columns: list[list[StepNode]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for node in nodes:
        columns[depth[node.id]].append(node)
    return columns


def status_lines(nodes: Sequence[StepNode]) -> list[str]:
    """One line per node, inputs first, each reason indented below its step (``mltf-flow status``)."""
    width = max((len(n.name) for n in nodes), default=0) + 2
    lines = []
    for column in layers(nodes):
        for node in column:
            lines.append(f"{node.name:<{width}}{node.summary()}")
            lines.extend(f"{'':<{width}}  because {reason}" for reason in node.reasons)
            lines.extend(f"{'':<{width}}  {note}" for note in node.notes)
    return lines


def status_tree(nodes: Sequence[StepNode], title: str) -> Tree:
    """The DAG as a rich tree from the targets (nodes nothing needs) down to their inputs; a node needed
    twice is drawn once, then named."""
    from rich.markup import escape
    from rich.tree import Tree

    by_id = {node.id: node for node in nodes}
    needed = {d for node in nodes for d in node.upstream}
    tree = Tree(escape(title))
    drawn: set[str] = set()
    stack: list[tuple[Tree, str]] = [(tree, n.id) for n in reversed(nodes) if n.id not in needed]
    while stack:
        parent, ident = stack.pop()
        node = by_id[ident]
        style = STYLES.get(node.state, "")
        label = f"[bold]{escape(node.name)}[/bold]  [{style}]{escape(node.summary())}[/{style}]" if style else \
            f"[bold]{escape(node.name)}[/bold]  {escape(node.summary())}"
        if ident in drawn:
            parent.add(f"{label}  [dim](see above)[/dim]")
            continue
        drawn.add(ident)
        branch = parent.add(label)
        for reason in node.reasons:
            branch.add(f"[italic]why:[/italic] {escape(reason)}")
        for note in node.notes:
            branch.add(escape(note))
        stack.extend((branch, d) for d in reversed(node.upstream) if d in by_id)
    return tree


__all__ = ["CACHED", "FAILED", "FAILED_LAST", "FILLS", "NOT_RUN", "RAN", "STAGED", "STAGE_KIND", "STEP_KIND", "STYLES",
           "TO_STAGE", "WILL_RUN", "StepNode", "layers", "status_lines", "status_tree"]
