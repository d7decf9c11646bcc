"""A study as a value: its identity follows what the study searches and nothing else (the searched parameters'
fixed values are not part of it; n_trials is part of its key only), where its storage is, and the Optuna
sampler and pruner each name makes."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import optuna
import pytest

from mltf_flow.config import load_settings
from mltf_flow.config.tune import read_space
from mltf_flow.errors import ConfigError
from mltf_flow.pipeline import PipelineStep
from mltf_flow.step_def import ResolvedStep
from mltf_flow.tune.space import check_space
from mltf_flow.tune.spec import StudySpec, make_pruner, make_sampler, storage_url

MLPROJECT = """\
name: demo
entry_points:
  train:
    parameters:
      epochs: {type: int, default: 8}
      lr: {type: float, default: 0.003}
      hidden: {type: int, default: 32}
    command: "python train.py --epochs {epochs} --lr {lr} --hidden {hidden}"
"""
SPACE = {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
         "hidden": {"type": "int", "low": 8, "high": 128}}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    (root / "pipeline.yaml").write_text("steps:\n  train: {entry_point: train}\n")
    (root / "train.py").write_text("print('train')\n")
    return root


def _step(project: Path, **params: str) -> ResolvedStep:
    task = PipelineStep(project_dir=str(project), run_step="train", overrides=params)
    value = task.describe()
    assert value is not None
    return value


def _spec(project: Path, space: dict[str, Any] | None = None, **settings: Any) -> StudySpec:
    entry = PipelineStep(project_dir=str(project), run_step="train").entry()
    checked = check_space(read_space(space or SPACE, "space.yaml"), entry, fed={}, source="space.yaml")
    return StudySpec(space=checked, metric=settings.pop("metric", "val_accuracy"), **settings)


def test_the_same_study_has_the_same_identity_and_key(project: Path) -> None:
    assert _spec(project).identity(_step(project)) == _spec(project).identity(_step(project))
    assert _spec(project).key(_step(project)) == _spec(project).key(_step(project))
    assert len(_spec(project).identity(_step(project))) == 64


def test_a_searched_parameters_own_value_is_not_part_of_the_identity(project: Path) -> None:
    spec, base = _spec(project), _step(project)
    other = _step(project, lr="0.02", hidden="100")
    assert other.key != base.key  # as steps they differ ...
    assert spec.identity(other) == spec.identity(base)  # ... as the study of them they do not
    assert spec.key(other) == spec.key(base)
    assert spec.study_name(other) == spec.study_name(base) == f"demo.train.{spec.identity(base)[:12]}"


def test_what_the_study_depends_on_changes_its_identity(project: Path) -> None:
    spec, base = _spec(project), _step(project)
    identity = spec.identity(base)
    assert spec.identity(_step(project, epochs="3")) != identity  # a fixed parameter of the step
    narrower = {**SPACE, "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
    changed = {
        "space": _spec(project, narrower),
        "fewer parameters": _spec(project, {"lr": SPACE["lr"]}),
        "metric": _spec(project, metric="val_loss"),
        "direction": _spec(project, direction="minimize"),
        "sampler": _spec(project, sampler="random"),
        "pruner": _spec(project, pruner="none"),
        "seed": _spec(project, seed=1),
        "baseline": _spec(project, include_defaults=False),
    }
    same = [what for what, other in changed.items() if other.identity(base) == identity]
    assert not same, f"the identity ignores: {', '.join(same)}"
    # The step's code is part of it too (it is part of the step's key without the searched parameters).
    assert spec.identity(base.with_code(base.code.without(["train.py"]))) != identity


def test_n_trials_changes_the_key_not_the_identity(project: Path) -> None:
    base = _step(project)
    twenty, fifty = _spec(project, n_trials=20), _spec(project, n_trials=50)
    assert twenty.identity(base) == fifty.identity(base)
    assert twenty.key(base) != fifty.key(base)
    assert twenty.key(base) != twenty.identity(base)


def test_a_chosen_name_wins_and_makes_the_study_its_own(project: Path) -> None:
    base = _step(project)
    named, unnamed = _spec(project, name="my-sweep"), _spec(project)
    assert named.study_name(base) == "my-sweep"
    # The same search under a name of its own is another study run (else it would be found complete already).
    assert named.key(base) != unnamed.key(base) and named.identity(base) == unnamed.identity(base)


def test_the_storage_is_beside_a_sqlite_store_else_in_the_work_dir(tmp_path: Path) -> None:
    store = tmp_path / "store" / "mlflow.db"
    assert storage_url(load_settings(tracking_uri=f"sqlite:///{store}")) == f"sqlite:///{tmp_path / 'store'}/optuna.db"
    served = load_settings(tracking_uri="http://127.0.0.1:5000")
    assert storage_url(served) == f"sqlite:///{served.work_dir / 'optuna.db'}"
    assert served.work_dir == tmp_path / "work"  # the test's MLTF_FLOW_WORK_DIR
    chosen = "postgresql://optuna@db.example.org/studies"
    assert storage_url(load_settings(tracking_uri=f"sqlite:///{store}", optuna_storage=chosen)) == chosen
    assert storage_url(load_settings(tracking_uri="http://127.0.0.1:5000", optuna_storage=chosen)) == chosen


def test_the_default_store_puts_studies_in_the_work_dir() -> None:
    settings = load_settings()
    assert settings.tracking_uri == f"sqlite:///{settings.work_dir / 'mlflow.db'}"
    assert storage_url(settings) == f"sqlite:///{settings.work_dir / 'optuna.db'}"


#: Sampler name -> Optuna's class, and the packages Optuna needs for it beyond its own.
SAMPLERS = {
    "tpe": (optuna.samplers.TPESampler, ()),
    "random": (optuna.samplers.RandomSampler, ()),
    "cmaes": (optuna.samplers.CmaEsSampler, ("cmaes",)),
    "gp": (optuna.samplers.GPSampler, ("torch", "scipy")),
    "qmc": (optuna.samplers.QMCSampler, ("scipy",)),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_name_makes_its_optuna_sampler_or_names_the_missing_package(project: Path, name: str) -> None:
    cls, needs = SAMPLERS[name]
    spec = _spec(project, sampler=name, seed=7)
    missing = [package for package in needs if importlib.util.find_spec(package) is None]
    if missing:
        with pytest.raises(ConfigError) as info:
            make_sampler(spec)
        assert str(info.value).startswith(f"sampler {name!r} needs {', '.join(missing)}, which is not installed")
        assert f"pip install {' '.join(missing)}" in str(info.value)
        return
    sampler = make_sampler(spec)
    assert type(sampler) is cls
    # What it makes samples: a package Optuna imports lazily would fail here, at the study's trials.
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0) + trial.suggest_float("y", 0.0, 1.0),
                   n_trials=3)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3


def test_tpe_groups_a_conditional_space(project: Path) -> None:
    plain = make_sampler(_spec(project))
    conditional_space = {**SPACE, "epochs": {"type": "int", "low": 2, "high": 4, "when": {"hidden": [8, 16]}}}
    grouped = make_sampler(_spec(project, conditional_space))
    assert isinstance(plain, optuna.samplers.TPESampler) and isinstance(grouped, optuna.samplers.TPESampler)
    assert not plain._group and grouped._group


PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
}


@pytest.mark.parametrize("name", list(PRUNERS))
def test_each_pruner_name_makes_its_optuna_pruner(project: Path, name: str) -> None:
    assert type(make_pruner(_spec(project, pruner=name))) is PRUNERS[name]


def test_an_unknown_name_is_a_config_error(project: Path) -> None:
    spec = _spec(project)
    with pytest.raises(ConfigError, match=r"^sampler 'grid' is not one of tpe, random, cmaes, gp, qmc\.$"):
        make_sampler(dataclasses.replace(spec, sampler="grid"))
    with pytest.raises(ConfigError, match=r"^pruner 'asha' is not one of none, median, percentile, hyperband"):
        make_pruner(dataclasses.replace(spec, pruner="asha"))


def test_the_spec_as_run_params(project: Path) -> None:
    params = _spec(project, n_trials=5, seed=3).params()
    assert params["study.metric"] == "val_accuracy" and params["study.n_trials"] == "5"
    assert params["study.seed"] == "3" and params["study.sampler"] == "tpe" and params["study.pruner"] == "median"
    assert params["study.space"].startswith('{"hidden":')  # canonical JSON: keys sorted

