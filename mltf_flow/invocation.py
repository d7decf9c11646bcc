"""The pipeline invocation: one id shared by every process of one ``luigi``/``mltf-flow`` command.

Every step run of an invocation hangs under one parent run found by this id (tag ``mltf.invocation_id``).
What the invocation's processes write about it together (its failures, the log of their tracebacks, its
failure report) lives in :func:`invocation_dir`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

INVOCATION_ENV = "MLTF_INVOCATION_ID"
T = TypeVar("T")


def invocation_id() -> str:
    """The id of this pipeline invocation, shared by every Luigi worker process.

    It is fixed in the process that builds the DAG (tasks are instantiated there, before Luigi forks
    per-task workers), so forked workers inherit it and attach their step runs to one parent run.
    """
    return os.environ.setdefault(INVOCATION_ENV, uuid.uuid4().hex)


def new_invocation() -> str:
    """Start a new invocation in this process (for programs calling ``luigi.build`` repeatedly)."""
    os.environ[INVOCATION_ENV] = uuid.uuid4().hex
    return os.environ[INVOCATION_ENV]


def invocation_dir(work_dir: Path, invocation: str) -> Path:
    """The directory of one invocation under the work dir (made by whoever writes into it first)."""
    return work_dir / "invocations" / invocation


def once_per_invocation(memo: dict[str, Any], name: str, compute: Callable[[], T]) -> T:
    """``memo[name]``, computed once per invocation: a task object may outlive one (a program calling
    ``luigi.build`` again with a new invocation sees settings and profiles afresh)."""
    held = memo.get(name)
    if held is None or held[0] != invocation_id():
        held = (invocation_id(), compute())
        memo[name] = held
    value: T = held[1]
    return value


__all__ = ["INVOCATION_ENV", "invocation_dir", "invocation_id", "new_invocation", "once_per_invocation"]
