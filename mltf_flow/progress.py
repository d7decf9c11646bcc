"""Progress of a running step, for Luigi (status message, tracking URL, percentage) and for the console.

On the console, progress is one line of ours: animated with rich while stderr is a terminal, and on anything
else (CI logs, pipes) a plain ``mltf_flow: ...`` line when the state changes, at most one per
``plain_every`` seconds, so a long wait is a few lines, never a flood (:class:`ConsoleStatus`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

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


class ConsoleStatus:
    """One line of progress on the console (see the module docstring). ``update`` may be called as often as
    wanted: a terminal shows the latest text; a log gets a line only when the text changed, ``quiet_for``
    seconds after the start (work that ends that soon says nothing) and ``plain_every`` seconds after the
    previous line. :meth:`final` always prints (the outcome of what was shown)."""

    def __init__(self, *, plain_every: float = 30.0, quiet_for: float = 0.0) -> None:
        self.plain_every, self.quiet_for = plain_every, quiet_for
        self._started = time.monotonic()
        self._status: Any = None
        self._text = ""
        self._pending = ""
        self._logged_at: float | None = None
        self._visible = False
        self._said = ""

    def __enter__(self) -> ConsoleStatus:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.errors import LiveError

            try:
                self._status = Console(stderr=True).status("")
                self._status.start()
            except LiveError:  # another live display owns the terminal (a progress bar): plain lines then
                self._status = None
        return self

    @property
    def shown(self) -> bool:
        """Whether anything reached the console yet."""
        return self._visible

    def update(self, text: str) -> None:
        if text == self._text:
            return
        self._text = text
        if self._status is not None:
            self._status.update(text)
            self._visible = True
            return
        now = time.monotonic()
        if now - self._started < self.quiet_for or (
                self._logged_at is not None and now - self._logged_at < self.plain_every):
            self._pending = text
            return
        self._say(text)

    def final(self, text: str | None = None) -> None:
        """Print ``text`` (default: the latest update not printed yet) whatever the rate: a line that stays."""
        text = text or self._pending
        if text and text != self._said:  # a line already printed is not printed twice
            if self._status is not None:
                self._status.update(text)
            self._text = text
            self._say(text)

    def _say(self, text: str) -> None:
        _log.info(text)
        self._logged_at, self._pending, self._visible, self._said = time.monotonic(), "", True, text

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


class Poller:
    """Call ``poll`` every ``interval`` seconds in a daemon thread until the ``with`` block ends; an
    exception ends the polling quietly (progress is best effort: the work it watches decides the outcome)."""

    def __init__(self, poll: Callable[[], None], interval: float, name: str) -> None:
        self.poll, self.interval = poll, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)

    #: False once a poll failed or the last one did not end in time: then nobody should poll again.
    healthy = True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:
                _log.debug("progress polling stopped", exc_info=True)
                self.healthy = False
                return

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # a poll hangs (a server that went away): left to die with the process
            self.healthy = False


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


def _size(n: float) -> str:
    """>>> _size(1536), _size(3 * 10**9)
    ('1.5 kB', '3.0 GB')
    """
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class StagingProgress:
    """Files and bytes checksummed while a local dataset is staged, on the console (after the first 2 s: a
    small dataset says nothing) and as the Luigi task's status."""

    def __init__(self, task: luigi.Task, label: str) -> None:
        self.task, self.label = task, label
        self._console = ConsoleStatus(quiet_for=2.0)
        self._started = time.monotonic()
        self._last = ""

    def update(self, files_done: int, files_total: int, bytes_done: int, bytes_total: int) -> None:
        self._last = (f"staging {self.label}: {files_done}/{files_total} files, {_size(bytes_done)} of "
                      f"{_size(bytes_total)} checksummed")
        self._console.update(self._last)
        report_status(self.task, self._last, percent=int(100 * bytes_done / bytes_total) if bytes_total else None)

    def __enter__(self) -> StagingProgress:
        self._console.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._console.shown and exc[0] is None:
            self._console.final(f"{self._last} in {time.monotonic() - self._started:.0f} s")
        self._console.__exit__(*exc)
