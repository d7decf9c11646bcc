"""Progress reporting to Luigi: status message, tracking URL and percentage of a running task."""

from __future__ import annotations

import luigi


def report_status(
    task: luigi.Task, message: str | None = None, *, url: str | None = None, percent: int | None = None
) -> None:
    """Show progress in Luigi (visualiser, luigid API). Luigi binds these callbacks only while its
    worker runs the task; called elsewhere (tests, a direct ``run()``) this does nothing."""
    for callback, value in (
        (task.set_status_message, message),
        (task.set_tracking_url, url),
        (task.set_progress_percentage, percent),
    ):
        if value is not None and callable(callback):
            callback(value)
