"""Luigi's log on the console without the traceback wall: each traceback goes to the invocation's log file.

Luigi logs a failed task with ``logger.exception`` on logger ``luigi-interface``: its ERROR line, then the
whole traceback, which for a failed step ends in a message the failure report (:mod:`mltf_flow.failure_report`)
shows grouped with the others. A filter on that logger writes every record that carries a traceback, in full,
to ``<work_dir>/invocations/<invocation id>/tracebacks.log`` (:func:`traceback_log`), and leaves the console
(and whatever else handles the record) its line, the exception's class and where the traceback went::

    ERROR: [pid 4242] Worker Worker(...) failed    PipelineStep(...) (StepFailed; traceback in .../tracebacks.log)

It is installed where a step is made (:func:`send_tracebacks_to_file`: both front ends, in the process that
builds the DAG, before Luigi forks task processes, which inherit it). When the file cannot be written the
record is left as it was: a traceback is never lost.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mltf_flow.invocation import invocation_dir, invocation_id
from mltf_flow.redaction import strip_credentials

LUIGI_LOGGER = "luigi-interface"
_FORMAT = logging.Formatter("%(asctime)s [pid %(process)d] %(levelname)s %(name)s: %(message)s")


def traceback_log(work_dir: Path, invocation: str) -> Path:
    """The file that holds the tracebacks of ``invocation``."""
    return invocation_dir(work_dir, invocation) / "tracebacks.log"


class TracebacksToFile(logging.Filter):
    """Moves a record's traceback into the invocation's log file (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info and not record.exc_text:
            return True
        try:
            from mltf_flow.config import load_settings

            path = traceback_log(load_settings().work_dir, invocation_id())
            path.parent.mkdir(parents=True, exist_ok=True)
            text = strip_credentials(_FORMAT.format(record))
            with open(path, "a", encoding="utf-8") as handle:  # one write: forked processes append whole records
                handle.write(text + "\n")
        except Exception:  # no settings, a full disk: the console keeps the traceback
            return True
        exc = record.exc_info[1] if record.exc_info else None
        what = f"{type(exc).__name__}; " if exc is not None else ""
        record.msg = strip_credentials(f"{record.getMessage()} ({what}traceback in {path})")
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def send_tracebacks_to_file() -> None:
    """Install the filter on Luigi's logger (idempotent)."""
    logger = logging.getLogger(LUIGI_LOGGER)
    if not any(isinstance(f, TracebacksToFile) for f in logger.filters):
        logger.addFilter(TracebacksToFile())


__all__ = ["LUIGI_LOGGER", "TracebacksToFile", "send_tracebacks_to_file", "traceback_log"]
