"""A search space: every rule of its YAML names the file and the parameter; checked against a real MLproject
(names, types, parameters fed by upstream steps); sampled through a real Optuna trial, conditions included."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from mltf_flow.config.tune import read_space, read_space_file
from mltf_flow.errors import ConfigError
from mltf_flow.mlproject import EntryPoint, read_project
from mltf_flow.tune.space import SearchSpace, check_space

MLPROJECT = """\
name: demo
entry_points:
  train:
    parameters:
      features: path
      epochs: {type: int, default: 8}
      lr: {type: float, default: 0.003}
      hidden: {type: int, default: 32}
      optimizer: {type: string, default: adam}
      momentum: {type: float, default: 0.9}
    command: "python train.py --features {features} --epochs {epochs} --lr {lr} --hidden {hidden}
      --optimizer {optimizer} --momentum {momentum}"
"""

#: A space file's text -> what the error names after "FILE: parameter NAME".
BAD_SPACES = [
    ("opt: {type: categorical}\n", "'opt': a categorical parameter needs 'choices: [...]'"),
    ("opt: {type: categorical, choices: [a, b], low: 1}\n", "'opt': a categorical parameter takes 'choices', not"),
    ("lr: {type: float, low: 0.5, high: 0.1}\n", "'lr': low 0.5 is above high 0.1."),
    ("lr: {type: float, low: 0, high: 0.1, log: true}\n", "'lr': log: true needs low > 0 (low is 0)."),
    ("lr: {type: float, low: -1, high: 0.1, log: true}\n", "'lr': log: true needs low > 0 (low is -1)."),
    ("lr: {type: float, low: 0.1, high: 1, log: true, step: 0.1}\n", "'lr': give 'log: true' or 'step', not both"),
    ("hidden: {type: int, low: 8.5, high: 128}\n", "'hidden': an int parameter needs whole numbers"),
    ("hidden: {type: int, low: 8, high: 128, step: 0.5}\n", "'hidden': an int parameter needs whole numbers"),
    ("lr: {type: float, high: 0.1}\n", "'lr': a float parameter needs 'low' and 'high'."),
    ("lr: {type: float, low: 0.1, high: 1, choices: [1]}\n", "'lr': a float parameter takes low/high, not 'choices'"),
    ("lr: {low: 0.1, high: 1}\n", "'lr', key 'type': missing, and it is required (float, int or categorical)."),
    ("lr: {type: complex, low: 0.1, high: 1}\n", "'lr', key 'type': expected float, int or categorical"),
    ("lr: {type: float, low: 0.1, high: 1, lg: true}\n", "'lr': unknown key(s) lg; known: type, low, high, log"),
    # `when` names a parameter declared later, or none at all: the condition could never be decided.
    ("momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: sgd}}\n"
     "optimizer: {type: categorical, choices: [adam, sgd]}\n",
     "'momentum': 'when' names 'optimizer', which is not a parameter declared before it (none). Declare "
     "'optimizer' first."),
    ("lr: {type: float, low: 0.1, high: 1}\nmomentum: {type: float, low: 0.5, high: 0.99, when: {optim: sgd}}\n",
     "'momentum': 'when' names 'optim', which is not a parameter declared before it (lr)."),
]


@pytest.mark.parametrize(("text", "named"), BAD_SPACES, ids=[f"rule{i}" for i in range(len(BAD_SPACES))])
def test_each_rule_of_a_range_names_the_file_and_the_parameter(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_space_file(path)
    assert str(info.value).startswith(f"{path}: parameter {named}"), str(info.value)


def test_a_space_file_that_is_no_space_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nosuch.yaml"
    with pytest.raises(ConfigError, match=rf"search space file {missing} does not exist\. Write one"):
        read_space_file(missing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=rf"^{empty}: the search space names no parameter; give e\.g\. lr:"):
        read_space_file(empty)
    listed = tmp_path / "list.yaml"
    listed.write_text("- lr\n")
    with pytest.raises(ConfigError, match=rf"^{listed}: expected a search space mapping .*found list\.$"):
        read_space_file(listed)
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: {type: float\n")
    with pytest.raises(ConfigError, match=rf"^{broken}: not valid YAML"):
        read_space_file(broken)


def test_a_valid_file_keeps_its_order_and_its_conditions(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("optimizer: {type: categorical, choices: [adam, sgd]}\n"
                    "momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: sgd}}\n"
                    "hidden: {type: int, low: 8, high: 128, step: 8, when: {optimizer: [adam, sgd]}}\n")
    space = read_space_file(path)
    assert list(space.params) == ["optimizer", "momentum", "hidden"]
    assert space.params["momentum"].when == {"optimizer": ("sgd",)}
    assert space.params["hidden"].when == {"optimizer": ("adam", "sgd")}
    assert space.params["optimizer"].choices == ("adam", "sgd")


# -- against the entry point --------------------------------------------------------------------------------------


@pytest.fixture
def train(tmp_path: Path) -> EntryPoint:
    root = tmp_path / "demo"
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    return read_project(root).entry_point("train")


def _check(data: dict[str, object], entry: EntryPoint, fed: dict[str, str] | None = None) -> SearchSpace:
    return check_space(read_space(data, "space.yaml"), entry, fed=fed or {}, source="space.yaml")


def test_an_unknown_parameter_lists_the_known_ones(train: EntryPoint) -> None:
    with pytest.raises(ConfigError) as info:
        _check({"learning_rate": {"type": "float", "low": 0.1, "high": 1}}, train, fed={"features": "features.f"})
    # The parameter fed from upstream is not offered: it cannot be searched.
    assert str(info.value) == ("space.yaml: parameter 'learning_rate' is not a parameter of entry point 'train' "
                               "(it has: epochs, lr, hidden, optimizer, momentum).")


def test_a_parameter_fed_from_an_upstream_output_cannot_be_searched(train: EntryPoint) -> None:
    with pytest.raises(ConfigError) as info:
        _check({"features": {"type": "categorical", "choices": ["a", "b"]}}, train, fed={"features": "features.f"})
    assert str(info.value) == ("space.yaml: parameter 'features' is filled from step output 'features.f': it "
                               "cannot be searched.")


def test_a_range_must_fit_the_parameters_type(train: EntryPoint) -> None:
    with pytest.raises(ConfigError) as info:
        _check({"epochs": {"type": "float", "low": 1, "high": 4},
                "hidden": {"type": "categorical", "choices": [16, 32.5, True]},
                "lr": {"type": "categorical", "choices": [0.1, "fast"]},
                "features": {"type": "categorical", "choices": ["a"]}}, train)
    problems = str(info.value).split("\n  ")
    assert problems == [
        "space.yaml: parameter 'epochs' has type int in MLproject; a float range cannot feed it.",
        "parameter 'hidden' has type int in MLproject; choices [32.5, True] are not.",
        "parameter 'lr' has type float in MLproject; choices ['fast'] are not.",
        "parameter 'features' has type path in MLproject; a categorical range cannot feed it.",
    ]


def test_ranges_that_fit_are_accepted(train: EntryPoint) -> None:
    space = _check({"lr": {"type": "int", "low": 1, "high": 3},  # an int range may feed a float parameter
                    "hidden": {"type": "categorical", "choices": [16, 32]},
                    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
                    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}}}, train)
    assert list(space.params) == ["lr", "hidden", "optimizer", "momentum"]
    assert space.conditional
    assert space.source == "space.yaml"


# -- sampling through a real Optuna trial --------------------------------------------------------------------------

SAMPLED = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "hidden": {"type": "int", "low": 8, "high": 128, "log": True},
    "epochs": {"type": "int", "low": 2, "high": 10, "step": 2},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
}


def _space(train: EntryPoint) -> SearchSpace:
    return _check(dict(SAMPLED), train)


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))


def test_suggest_samples_within_each_range_on_its_scale(train: EntryPoint) -> None:
    space, study = _space(train), _study()
    points = []
    for _ in range(60):
        trial = study.ask()
        points.append(space.suggest(trial))
        study.tell(trial, 0.0)
    for point in points:
        assert 1e-4 <= point["lr"] <= 1e-1 and isinstance(point["lr"], float)
        assert 8 <= point["hidden"] <= 128 and isinstance(point["hidden"], int)
        assert point["epochs"] in (2, 4, 6, 8, 10)
        assert point["optimizer"] in ("adam", "sgd")
    # On a log scale half the samples fall below the geometric middle (~3.2e-3); uniformly, only ~3 % would.
    below = sum(point["lr"] < math.sqrt(1e-4 * 1e-1) for point in points)
    assert below >= 15, sorted(point["lr"] for point in points)
    # Optuna recorded the distributions we asked for (log scale, step).
    dist = study.trials[0].distributions
    assert dist["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert dist["hidden"] == optuna.distributions.IntDistribution(8, 128, log=True)
    assert dist["epochs"] == optuna.distributions.IntDistribution(2, 10, step=2)


def test_a_conditional_parameter_is_sampled_only_when_its_condition_holds(train: EntryPoint) -> None:
    space, study = _space(train), _study()
    study.enqueue_trial({"optimizer": "adam"})
    study.enqueue_trial({"optimizer": "sgd"})
    adam_trial = study.ask()
    adam = space.suggest(adam_trial)
    study.tell(adam_trial, 0.0)
    sgd_trial = study.ask()
    sgd = space.suggest(sgd_trial)
    study.tell(sgd_trial, 0.0)
    assert adam["optimizer"] == "adam" and "momentum" not in adam
    assert "momentum" not in study.trials[0].params  # not even asked of Optuna
    assert sgd["optimizer"] == "sgd" and 0.5 <= sgd["momentum"] <= 0.99
    assert study.trials[1].params["momentum"] == sgd["momentum"]


def test_the_defaults_point_applies_the_conditions(train: EntryPoint) -> None:
    space = _space(train)
    step_values = {"features": "/data/f.mltft", "epochs": 4, "lr": 0.003, "hidden": 32, "optimizer": "adam",
                   "momentum": 0.9}
    assert space.defaults_point(step_values) == {"lr": 0.003, "hidden": 32, "epochs": 4, "optimizer": "adam"}
    with_sgd = {**step_values, "optimizer": "sgd"}
    assert space.defaults_point(with_sgd) == {"lr": 0.003, "hidden": 32, "epochs": 4, "optimizer": "sgd",
                                              "momentum": 0.9}


def test_the_canonical_space_is_json_in_declaration_order(train: EntryPoint) -> None:
    canonical = _space(train).canonical()
    assert list(canonical) == list(SAMPLED)
    assert canonical["momentum"] == {"type": "float", "low": 0.5, "high": 0.99, "log": False, "step": None,
                                     "when": {"optimizer": ["sgd"]}}
    assert canonical["optimizer"] == {"type": "categorical", "choices": ["adam", "sgd"]}

