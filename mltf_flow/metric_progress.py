"""Training progress read from the step's MLflow run while its command runs: ``train: epoch 3/12, loss 0.41``.

Nothing in the user's script changes: a script that logs a loss per epoch (``mlflow.log_metric("train_loss",
v, step=epoch)``, or autologging) is followed by polling the run's metrics every few seconds (one
``get_run`` and one metric history per poll, of a run this process created). The epoch shown is the number
of distinct steps the loss was logged at; the total, where the step has an ``epochs`` parameter, its value.
A script that logs no loss shows nothing. Polling stops with the command, after one last look whose answer
is the step's summary line (``train: epoch 12/12, train_loss 0.38``); a failed poll ends it quietly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import luigi

from mltf_flow.progress import ConsoleStatus, Poller, report_status

#: Metrics taken as "the loss", in order of preference; else the first metric whose name contains "loss".
LOSS_METRICS = ("train_loss", "loss", "training_loss", "val_loss")


def pick_loss(names: list[str]) -> str | None:
    """The metric to follow among a run's metric names.

    >>> pick_loss(["val_accuracy", "val_loss", "train_loss"])
    'train_loss'
    >>> pick_loss(["data_load_seconds"]) is None
    True
    """
    for name in LOSS_METRICS:
        if name in names:
            return name
    return next((n for n in sorted(names) if "loss" in n.lower()), None)


def describe(step: str, epochs_done: int, total: int | None, loss_name: str, loss: float) -> str:
    """>>> describe("train", 3, 12, "train_loss", 0.4123)
    'train: epoch 3/12, train_loss 0.412'
    """
    of = f"/{total}" if total else ""
    return f"{step}: epoch {epochs_done}{of}, {loss_name} {loss:.3g}"


def total_epochs(params: Mapping[str, Any]) -> int | None:
    value = params.get("epochs")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class EpochProgress:
    """Follow the run's loss while the step's command runs (see the module docstring)."""

    def __init__(self, tracking_uri: str, run_id: str, step: str, total: int | None, reporter: luigi.Task,
                 interval: float = 3.0) -> None:
        self.tracking_uri, self.run_id, self.step, self.total = tracking_uri, run_id, step, total
        self.reporter = reporter
        self._console = ConsoleStatus()
        self._poller = Poller(self.poll, interval, "mltf-epochs")
        self._client: Any = None
        self.last = ""

    def poll(self) -> None:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        metrics = self._client.get_run(self.run_id).data.metrics
        name = pick_loss(list(metrics))
        if name is None:
            return
        history = self._client.get_metric_history(self.run_id, name)
        done = len({m.step for m in history})
        text = describe(self.step, done, self.total, name, float(metrics[name]))
        if text != self.last:
            self.last = text
            self._console.update(text)
            percent = int(100 * done / self.total) if self.total else None
            report_status(self.reporter, text, percent=percent)

    def __enter__(self) -> EpochProgress:
        self._console.__enter__()
        self._poller.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._poller.__exit__(*exc)
        if self._poller.healthy:  # not after a failed or hanging poll: the step's end is not held up
            with contextlib.suppress(Exception):  # best effort, as the polling
                self.poll()  # the last epochs, logged after the last poll: the summary line says where it ended
        if self.last:
            self._console.final(self.last)
        self._console.__exit__(*exc)


__all__ = ["LOSS_METRICS", "EpochProgress", "describe", "pick_loss", "total_epochs"]
