"""The one rule every run we open obeys: it never stays RUNNING.

Steps, staging runs and backend submissions open an MLflow run and then do work that can fail or be
interrupted. :func:`run_guard` wraps that work: the run ends exactly once, either through
:meth:`RunGuard.end` (the normal outcome, success or a failure the caller explains) or, when an exception
escapes first, as FAILED (KILLED for Ctrl-C, SIGTERM, SystemExit) with the error as tag ``mltf.error``,
its log kept and the pipeline's parent run told; the error carries the run's id (``run_id``) so the failure
report names the run whatever the error was. Bookkeeping that fails while ending is reported, never
raised over the original error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mltf_flow import phases
from mltf_flow.launch.local import Stopped
from mltf_flow.tags import TAG_ERROR

if TYPE_CHECKING:
    from mltf_flow.tracking import Tracker

_log = logging.getLogger(__name__)


@dataclass
class RunGuard:
    """An open run and how to end it (see the module docstring)."""

    tracker: Tracker
    run_id: str
    #: The pipeline parent run to tell about the outcome, and the step name it records.
    parent_id: str | None = None
    step: str = ""
    #: A log to keep as artifact ``mltf/<log_name>`` if the work fails before logging it itself.
    log_path: Path | None = None
    log_name: str = "step.log"
    #: Put before the error in tag ``mltf.error`` (e.g. "submission failed: ").
    error_prefix: str = ""
    #: Set with the error when an exception ends the run FAILED (not when it is KILLED), e.g. a trial's state.
    failed_tags: Mapping[str, str] = field(default_factory=dict)
    ended: bool = field(default=False, init=False)

    def end(self, *, ok: bool, exit_code: int | None, status: str | None = None,
            tags: Mapping[str, str] | None = None) -> None:
        """End the run (``mltf.complete=true`` + FINISHED only when ``ok``; ``status`` when not, else FAILED)
        and settle the parent. ``tags`` (e.g. a trial's state) are set with the exit code, in one request.

        The parent is told first. Killed between the two, this run stays RUNNING: the next invocation runs the
        step again, reaping this run and, as it opens its own parent, any parent left RUNNING. In the other
        order a kill could leave a complete last step under a RUNNING parent, and a rerun that finds every
        step complete runs nothing, so nothing would ever end that parent."""
        self._settle_parent(ok)
        phases.reached(phases.PARENT_TOLD, self.step)
        self.tracker.finish_step(self.run_id, ok=ok, exit_code=exit_code, status=None if ok else status, tags=tags)
        self.ended = True

    def _settle_parent(self, ok: bool) -> None:
        if self.parent_id:
            self.tracker.settle_parent(self.parent_id, step=self.step, ok=ok)

    def _end_after(self, exc: BaseException) -> None:
        killed = isinstance(exc, KeyboardInterrupt | SystemExit | Stopped)
        try:
            if self.log_path is not None and self.log_path.exists():
                self.tracker.log_artifact(self.run_id, self.log_path, "mltf", name=self.log_name)
            error = {TAG_ERROR: f"{self.error_prefix}{type(exc).__name__}: {exc}"[:5000]}
            self.tracker.set_tags(self.run_id, error if killed else {**self.failed_tags, **error})
            self.tracker.finish_step(self.run_id, ok=False, exit_code=None, status="KILLED" if killed else "FAILED")
            self.ended = True
            self._settle_parent(False)
        except Exception as bookkeeping:  # the original error matters more; still say what else failed
            _log.error(f"could not mark MLflow run {self.run_id} as ended after {type(exc).__name__}: {bookkeeping}")


@contextlib.contextmanager
def run_guard(
    tracker: Tracker, run_id: str, *, parent_id: str | None = None, step: str = "", log_path: Path | None = None,
    error_prefix: str = "", failed_tags: Mapping[str, str] | None = None,
) -> Iterator[RunGuard]:
    """Do the work of an open run; whatever escapes ends the run first (see the module docstring)."""
    guard = RunGuard(tracker, run_id, parent_id=parent_id, step=step, log_path=log_path, error_prefix=error_prefix,
                     failed_tags=dict(failed_tags or {}))
    try:
        yield guard
    except BaseException as exc:
        if not guard.ended:
            guard._end_after(exc)
        if not getattr(exc, "run_id", None):
            # A stop signal or a library's error carries no run: the failure report (mltf_flow.failures) would
            # say "no MLflow run" for a step whose run exists. Some exception types take no new attribute.
            with contextlib.suppress(Exception):
                exc.run_id = run_id  # type: ignore[attr-defined]
        raise


__all__ = ["RunGuard", "run_guard"]
