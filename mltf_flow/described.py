"""A step's value as memoised by its task object, and the order a DAG's steps are described in.

A step's value (:class:`~mltf_flow.step_def.ResolvedStep`, its key) needs the keys of the steps it requires,
so describing the last step of a chain describes every step before it. Done recursively, a 1,000-step
chain is deeper than Python's recursion limit; so :func:`deepest_first` lists the steps that hold no value
yet, each after those it requires, and they are described in that order, each asking one level down.

"An upstream result is missing" is memoised too (else each step of an unfinished chain would walk the rest
of it again), but only until a step run ends in this process (:func:`run_ended`) and never in another
process: a forked Luigi task process, or a later invocation, asks again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from mltf_flow.invocation import invocation_id

T = TypeVar("T")
#: Step runs that ended in this process.
_RUNS_ENDED = [0]


def run_ended() -> None:
    """A step run ended in this process: steps found without an upstream result are described again."""
    _RUNS_ENDED[0] += 1


def _missing_stamp() -> tuple[str, int, int]:
    return (invocation_id(), os.getpid(), _RUNS_ENDED[0])


def held_value(memo: dict[str, Any]) -> tuple[bool, Any]:
    """(whether ``memo`` holds a value that still stands, that value: None for "an upstream result is
    missing")."""
    held = memo.get("value")
    if held is None:
        return False, None
    if held[1] is None:
        return held[0] == _missing_stamp(), None
    return held[0] == invocation_id(), held[1]


def hold_value(memo: dict[str, Any], value: Any) -> None:
    """Memoise a step's value (for this invocation), or None (see the module docstring)."""
    memo["value"] = (invocation_id() if value is not None else _missing_stamp(), value)


def drop_missing(memo: dict[str, Any]) -> None:
    """Forget a memoised "an upstream result is missing" (before the step runs: a requirement that is not a
    step run, staging, may have completed in this process since)."""
    if memo.get("value", (None, True))[1] is None:
        memo.pop("value")


def deepest_first(root: T, upstream: Callable[[T], Iterable[T]], held: Callable[[T], bool],
                  ident: Callable[[T], str]) -> list[T]:
    """The tasks ``root`` needs, directly or not, that are not ``held`` yet, each after those it needs
    (``root`` itself not included); iterative, whatever the depth."""
    order: list[T] = []
    seen: set[str] = {ident(root)}
    stack: list[tuple[T, bool]] = [(root, False)]
    while stack:
        task, expanded = stack.pop()
        if expanded:
            if task is not root:
                order.append(task)
            continue
        stack.append((task, True))
        for dep in upstream(task):
            if ident(dep) not in seen and not held(dep):
                seen.add(ident(dep))
                stack.append((dep, False))
    return order


__all__ = ["deepest_first", "drop_missing", "held_value", "hold_value", "run_ended"]
