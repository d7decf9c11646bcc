"""Hyperparameter studies as cached fan-outs: Optuna studies whose trials are MLflow runs of a step.

* :mod:`~mltf_flow.tune.space`: the search space, checked against the entry point, sampled through Optuna;
* :mod:`~mltf_flow.tune.spec`: a study as a value (identity, key, storage, sampler, pruner);
* :mod:`~mltf_flow.tune.trial`: one trial = the step with the trial's parameters (cached by its key, pruned from
  the metric it logs per epoch);
* :mod:`~mltf_flow.tune.study`: the driver (claim, resume, fan-out on the profile's workers, best trial);
* :mod:`~mltf_flow.tune.step`: ``TuneStep``, the study as one Luigi task; :mod:`~mltf_flow.tune.best`: a study's
  best trial for ``--from-study``; :mod:`~mltf_flow.tune.commands`: ``mltf-flow tune`` and
  ``mltf-flow optuna-dashboard``.

For a training script, :func:`report` logs a metric of its run at an epoch: ``mlflow.log_metric`` for the run
mltf_flow (or ``mlflow run``) started, and nothing for a script run by hand, where MLflow would start a stray run.
Log the study's metric every epoch (with it, or with MLflow's own calls): the pruner reads it. See docs/hpo.md.
"""

from __future__ import annotations

import os
import sys


def report(metric: str, value: float, step: int) -> None:
    """Log ``metric`` = ``value`` at ``step`` (the epoch) to the run this process was started for
    (``$MLFLOW_RUN_ID``, set for every step and trial); without one it does nothing. The same in a study and
    out of it: a trial identical to a run made outside the study is found by its key, and its value is this
    metric."""
    loaded = sys.modules.get("mlflow")
    # MLflow drops MLFLOW_RUN_ID from the environment once its first call resumed that run: then it is active.
    if not os.environ.get("MLFLOW_RUN_ID") and (loaded is None or loaded.active_run() is None):
        return
    import mlflow

    mlflow.log_metric(metric, float(value), step=int(step))


__all__ = ["report"]
