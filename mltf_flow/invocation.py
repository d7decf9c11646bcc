"""The pipeline invocation: one id shared by every process of one ``luigi``/``mltf-flow`` command.

Every step run of an invocation hangs under one parent run found by this id (tag ``mltf.invocation_id``).
What the invocation's processes write about it together (its failures, the log of their tracebacks, its
failure report) lives in :func:`invocation_dir`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

INVOCATION_ENV = "MLTF_INVOCATION_ID"
_PARENT_MARKER = "parent-run"
T = TypeVar("T")
#: (kind, key) -> (invocation, version, value): what every task object of this process shares.
_SHARED: dict[tuple[str, Hashable], tuple[str, Hashable, Any]] = {}


def invocation_id() -> str:
    """The id of this pipeline invocation, shared by every Luigi worker process.

    It is fixed in the process that builds the DAG (tasks are instantiated there, before Luigi forks
    per-task workers), so forked workers inherit it and attach their step runs to one parent run.
    """
    # Asked thousands of times by a large DAG: a new uuid only when there is none yet.
    return os.environ.get(INVOCATION_ENV) or os.environ.setdefault(INVOCATION_ENV, uuid.uuid4().hex)


def new_invocation() -> str:
    """Start a new invocation in this process (for programs calling ``luigi.build`` repeatedly)."""
    os.environ[INVOCATION_ENV] = uuid.uuid4().hex
    return os.environ[INVOCATION_ENV]


def invocation_dir(work_dir: Path, invocation: str) -> Path:
    """The directory of one invocation under the work dir (made by whoever writes into it first)."""
    return work_dir / "invocations" / invocation


def mark_parent_made(work_dir: Path, invocation: str) -> None:
    """Note that the invocation has a parent run (whichever of its processes made it), so that its main process
    knows at exit, without asking the store, that there is something to draw (:func:`parent_made`)."""
    folder = invocation_dir(work_dir, invocation)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _PARENT_MARKER).touch()


def parent_made(work_dir: Path, invocation: str) -> bool:
    """Whether a process of the invocation made or reopened its parent run (a cached invocation makes none)."""
    return (invocation_dir(work_dir, invocation) / _PARENT_MARKER).exists()


def once_per_invocation(memo: dict[str, Any], name: str, compute: Callable[[], T]) -> T:
    """``memo[name]``, computed once per invocation: a task object may outlive one (a program calling
    ``luigi.build`` again with a new invocation sees settings and profiles afresh)."""
    held = memo.get(name)
    if held is None or held[0] != invocation_id():
        held = (invocation_id(), compute())
        memo[name] = held
    value: T = held[1]
    return value


def shared_per_invocation(kind: str, key: Hashable, version: Hashable, compute: Callable[[], T]) -> T:
    """``compute()`` for ``key``, shared by every task object of this process for one invocation.

    A 1,000-step DAG asks for the same project, ``pipeline.yaml`` and code once per step; they are read
    once. ``version`` is what the inputs look like now (file stamps, :func:`mltf_flow.config.files.stamp`):
    a file edited within one invocation is read again, and every invocation reads afresh. Errors are not
    remembered."""
    held = _SHARED.get((kind, key))
    current = invocation_id()
    if held is None or held[0] != current or held[1] != version:
        held = (current, version, compute())
        _SHARED[(kind, key)] = held
    value: T = held[2]
    return value


def forget_shared(kind: str) -> None:
    """Drop what :func:`shared_per_invocation` holds for ``kind`` (a step run may have changed it)."""
    for slot in [slot for slot in _SHARED if slot[0] == kind]:
        del _SHARED[slot]


__all__ = ["INVOCATION_ENV", "forget_shared", "invocation_dir", "invocation_id", "mark_parent_made", "new_invocation",
           "once_per_invocation", "parent_made", "shared_per_invocation"]
