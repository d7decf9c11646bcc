"""What mltf_flow says while it works reaches the console: the ``mltf_flow`` logger's stderr handler.

Library modules log through ``logging.getLogger(__name__)``; nothing is configured at import. Where
mltf_flow starts working for a user (a step is built, ``mltf-flow`` starts, ``mlflow run --backend mltf``
submits, a ``SlurmSubmittedRun`` is made), :func:`use_console` makes sure those records are seen, as the
``print`` lines they replace were: INFO and above, on stderr, as ``mltf_flow: <message>``.

An application's own logging configuration wins: a handler on the ``mltf_flow`` logger means ours is not
added, and while the root logger has handlers (``logging.basicConfig``, luigi's ``logging_conf_file``,
pytest) records go there instead, so nothing is shown twice.
"""

from __future__ import annotations

import logging
import sys

from mltf_flow.redaction import strip_credentials

LOGGER = "mltf_flow"
FORMAT = "mltf_flow: %(message)s"


class _Console(logging.Handler):
    """Write to the *current* ``sys.stderr`` (captured or replaced ones too), unless the root logger
    has handlers of its own: the record reaches them by propagation."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        try:
            sys.stderr.write(strip_credentials(self.format(record)) + "\n")
            sys.stderr.flush()
        except Exception:  # logging's contract: report through handleError, never raise
            self.handleError(record)


def use_console() -> None:
    """Show mltf_flow's INFO+ records on stderr (idempotent; see the module docstring)."""
    logger = logging.getLogger(LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if logger.handlers:
        return
    handler = _Console()
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)


__all__ = ["FORMAT", "LOGGER", "use_console"]
