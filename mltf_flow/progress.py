"""Progress reporting to Luigi: status message, tracking URL and percentage of a running task."""

from __future__ import annotations

import logging

import luigi

_log = logging.getLogger(__name__)


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


class ClusterProgress:
    """While a step runs, report the share of finished Dask tasks (since the step started) and the
    dashboard link as the Luigi task's status. Polls the scheduler every ``interval`` seconds."""

    def __init__(self, task: luigi.Task, client: object, label: str, interval: float = 2.0) -> None:
        import threading

        self.task, self.client, self.label, self.interval = task, client, label, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="mltf-progress")
        self._baseline: tuple[int, int] | None = None

    @staticmethod
    def _counts(dask_scheduler: object) -> tuple[int, int]:
        # Task prefixes keep cumulative per-state transition counts for the scheduler's lifetime
        # (task groups vanish once their tasks are forgotten): every task waits once, and ends in
        # memory or erred once.
        done = total = 0
        for prefix in getattr(dask_scheduler, "task_prefixes", {}).values():
            counts = prefix.state_counts
            total += counts.get("waiting", 0)
            done += counts.get("memory", 0) + counts.get("erred", 0)
        return min(done, total), total

    def _poll(self) -> tuple[int, int]:
        counts = self.client.run_on_scheduler(self._counts)  # type: ignore[attr-defined]
        return int(counts[0]), int(counts[1])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                done, total = self._poll()
            except Exception:  # the cluster may be going away; progress is best effort
                return
            base_done, base_total = self._baseline or (0, 0)
            new_total, new_done = total - base_total, done - base_done
            percent = int(100 * new_done / new_total) if new_total > 0 else 0
            report_status(self.task, f"{self.label}: {new_done}/{new_total} Dask tasks", percent=percent)

    def __enter__(self) -> ClusterProgress:
        try:
            self._baseline = self._poll()
        except Exception:  # no baseline: progress then counts from the scheduler's start (best effort)
            self._baseline = None
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class RuleProgress:
    """Progress of a Rucio rule (locks OK / replicating / stuck) or download: a rich progress bar when
    stderr is a terminal, one line per change otherwise, and the Luigi task's status and percentage."""

    def __init__(self, task: luigi.Task, label: str) -> None:
        self.task, self.label = task, label
        self._last: tuple[str, int, int, int, int] | None = None
        self._bar: object | None = None
        self._bar_task: object | None = None

    def __enter__(self) -> RuleProgress:
        import sys

        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           console=Console(stderr=True), transient=False)
            bar.start()
            self._bar, self._bar_task = bar, bar.add_task(self.label, total=None)
        return self

    def update(self, state: str, ok: int, replicating: int, stuck: int, total: int) -> None:
        now = (state, ok, replicating, stuck, total)
        if now == self._last:
            return
        self._last = now
        text = f"{self.label}: {state}, {ok}/{total} files on the facility storage"
        if replicating or stuck:
            text += f" ({replicating} replicating, {stuck} stuck)"
        if self._bar is not None:
            self._bar.update(self._bar_task, description=f"{self.label} {state}", completed=ok,  # type: ignore[attr-defined]
                             total=total)
        else:
            _log.info(text)
        report_status(self.task, text, percent=int(100 * ok / total) if total else None)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()  # type: ignore[attr-defined]
