"""The facility's example pipeline: quark/gluon jet tagging as three cached steps.

    luigi --module pipelines Train --local-scheduler                 # everything, cached
    luigi --module pipelines Train --epochs 12 --local-scheduler     # only Train reruns
    luigi --module pipelines Train --ExtractFeatures-max-constituents 32 --local-scheduler
    luigi --module pipelines Train --profile slurm-ci --local-scheduler  # SLURM workers (configs/profiles.yaml)
    luigi --module pipelines Train --dataset rucio://test:jets_v1 --profile rucio-demo --local-scheduler
    luigi --module pipelines Tune --n-trials 20 --epochs 4 --local-scheduler   # an Optuna study of Train

``StageDataset`` verifies the input files and writes their manifest, ``ExtractFeatures`` runs the
MLproject entry point ``features`` on them, ``Train`` runs ``train`` on the features. Importing this
module is cheap (no mlflow, dask or torch): Luigi imports it for every invocation.
"""

from __future__ import annotations

from pathlib import Path

import luigi

from mltf_flow.ddp.step import DDPStep
from mltf_flow.staging.step import StageStep
from mltf_flow.step import MLflowStep
from mltf_flow.tune.step import TuneStep

PROJECT = Path(__file__).resolve().parent / "jet_tagging"
#: The sample written by `make data` (relative to where luigi runs; pass --dataset to change it).
DEFAULT_DATASET = "data/jet_sample"


class StageDataset(StageStep):
    """Stage the input dataset: a local path, file:// URI, or rucio://scope:name (replicated to the
    facility RSE of the profile's ``rucio:`` section, verified, recorded in MLflow)."""

    dataset: str = luigi.Parameter(default=DEFAULT_DATASET)


class ExtractFeatures(MLflowStep):
    """Per-jet features from the staged ROOT files (entry point ``features``)."""

    project_dir = PROJECT
    entry_point = "features"
    code_paths = ("features.py",)
    inputs = {"manifest": "dataset"}
    outputs = {"features": "features.mltft"}
    pass_through = ("dataset",)

    dataset: str = luigi.Parameter(default=DEFAULT_DATASET)
    min_constituent_pt: float | None = luigi.OptionalFloatParameter(default=None)
    max_constituents: int | None = luigi.OptionalIntParameter(default=None)

    def requires(self) -> dict[str, luigi.Task]:
        return {"dataset": self.upstream(StageDataset, dataset=self.dataset)}


class Train(DDPStep):
    """The quark/gluon classifier (entry point ``train``); ``None`` = the MLproject default.

    Trains as a DDP job on the workers of its profile's GPU variant (``gpu_profile``): one rank per
    worker (``--world-size`` to use fewer), gloo on CPU, NCCL on GPUs."""

    project_dir = PROJECT
    entry_point = "train"
    code_paths = ("train.py",)
    inputs = {"features": "features.features"}
    outputs = {"model": "model:jet_tagger", "metrics": "metrics.json"}
    pass_through = ("dataset",)

    dataset: str = luigi.Parameter(default=DEFAULT_DATASET)
    epochs: int | None = luigi.OptionalIntParameter(default=None)
    lr: float | None = luigi.OptionalFloatParameter(default=None)
    hidden: int | None = luigi.OptionalIntParameter(default=None)
    batch_size: int | None = luigi.OptionalIntParameter(default=None)
    seed: int | None = luigi.OptionalIntParameter(default=None)
    optimizer: str | None = luigi.OptionalParameter(default=None)
    momentum: float | None = luigi.OptionalFloatParameter(default=None)

    def requires(self) -> dict[str, luigi.Task]:
        return {"features": self.upstream(ExtractFeatures, dataset=self.dataset)}


class Tune(TuneStep, Train):
    """A hyperparameter study of ``Train`` (Optuna, TPE, median pruning): each trial is a Train run with the
    trial's values of ``space.yaml``'s parameters; ``Train``'s other parameters (``--epochs 4``) are fixed.

        luigi --module pipelines Tune --n-trials 20 --epochs 4 --local-scheduler
        luigi --module pipelines Train --from-study NAME --local-scheduler     # the best trial: cached"""

    search_space = "space.yaml"
    objective = "val_accuracy"


__all__ = ["ExtractFeatures", "StageDataset", "Train", "Tune"]
