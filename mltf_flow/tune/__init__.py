"""Hyperparameter studies as cached fan-outs: Optuna studies whose trials are MLflow runs of a step.

* :mod:`~mltf_flow.tune.space`: the search space, checked against the entry point, sampled through Optuna;
* :mod:`~mltf_flow.tune.spec`: a study as a value (identity, key, storage, sampler, pruner);
* :mod:`~mltf_flow.tune.trial`: one trial = the step with the trial's parameters (cached by its key, pruned from
  the metric it logs per epoch);
* :mod:`~mltf_flow.tune.study`: the driver (claim, resume, fan-out on the profile's workers, best trial);
* :mod:`~mltf_flow.tune.step`: ``TuneStep``, the study as one Luigi task; :mod:`~mltf_flow.tune.best`: a study's
  best trial for ``--from-study``; :mod:`~mltf_flow.tune.commands`: ``mltf-flow tune`` and
  ``mltf-flow optuna-dashboard``.

For a training script, :func:`report` logs the metric the study optimises at an epoch (a one-line alternative
to ``mlflow.log_metric`` when the script's own name for it differs). See docs/hpo.md.
"""

from __future__ import annotations

import os


def report(value: float, step: int) -> None:
    """Log the study's metric (``$MLTF_TUNE_METRIC``, set for every trial) at ``step`` (the epoch) to the
    trial's MLflow run: the pruner reads it. Outside a study it does nothing."""
    name = os.environ.get("MLTF_TUNE_METRIC")
    if not name:
        return
    import mlflow

    mlflow.log_metric(name, float(value), step=int(step))


__all__ = ["report"]
