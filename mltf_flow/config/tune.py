"""A hyperparameter study as types: its search space (:class:`ParamRange`) and its settings (:class:`StudyEntry`).

Both come from YAML: a ``space.yaml`` (``mltf-flow tune --space``), or a study of ``pipeline.yaml``'s
``studies:`` section::

    studies:
      sweep:
        step: train                  # the step whose entry point each trial runs
        metric: val_accuracy         # what the entry point logs (per epoch: pruning reads it)
        direction: maximize
        n_trials: 20
        pruner: median               # none | median | percentile | hyperband | successive_halving
        sampler: tpe                 # tpe | random | cmaes | gp | qmc
        space:                       # or a file: space: space.yaml (relative to the project)
          lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
          hidden: {type: int, low: 8, high: 128, log: true}
          optimiser: {type: categorical, choices: [adam, sgd]}
          momentum: {type: float, low: 0.0, high: 0.99, when: {optimiser: sgd}}   # conditional

Everything the YAML alone decides is checked here (types, ranges, a condition naming a parameter declared
before it); what needs the project (each name is a parameter of the entry point, of a matching type) is
checked by :mod:`mltf_flow.tune.space`. Nothing here imports optuna.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml

from mltf_flow.config.fields import Before, Ge, StrictBool, StrictFloat, StrictInt, StrictStr
from mltf_flow.config.files import load_yaml, yaml_problem
from mltf_flow.config.schema import Schema, validate
from mltf_flow.errors import ConfigError

Number = StrictInt | StrictFloat
Choice = StrictBool | StrictInt | StrictFloat | StrictStr
#: Samplers by name (optuna.samplers), and pruners (optuna.pruners): mltf_flow.tune.spec makes them.
Sampler = Literal["tpe", "random", "cmaes", "gp", "qmc"]
Pruner = Literal["none", "median", "percentile", "hyperband", "successive_halving"]


def _when(value: Any) -> Any:
    """``when: {optimiser: sgd}`` or ``when: {optimiser: [sgd, rmsprop]}``: the values as a tuple each."""
    if not isinstance(value, Mapping):
        return value
    return {str(k): tuple(v) if isinstance(v, list | tuple) else (v,) for k, v in value.items()}


@dataclass(frozen=True, kw_only=True)
class ParamRange(Schema):
    """What one parameter of the entry point may take in a trial."""

    entry: ClassVar[str] = "parameter"
    shape: ClassVar[str] = "{type: float|int, low: L, high: H, log: true} or {type: categorical, choices: [...]}"
    expect: ClassVar[dict[str, str]] = {"type": "float, int or categorical"}

    type: Literal["float", "int", "categorical"]
    low: Number | None = None
    high: Number | None = None
    #: Sample on a log scale (low > 0).
    log: StrictBool = False
    #: Discretisation step (int: default 1); not with log.
    step: Number | None = None
    choices: tuple[Choice, ...] = ()
    #: Sampled only when every named parameter (declared earlier) took one of the given values.
    when: Annotated[dict[StrictStr, tuple[Choice, ...]], Before(_when)] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs 'choices: [...]' (at least one value).")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical parameter takes 'choices', not low/high/log/step.")
            return
        if self.choices:
            raise ValueError(f"a {self.type} parameter takes low/high, not 'choices' (or use type: categorical).")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'.")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}.")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (low is {self.low}).")
        if self.log and self.step is not None:
            raise ValueError("give 'log: true' or 'step', not both (Optuna samples neither so).")
        if self.type == "int" and not all(isinstance(v, int) for v in (self.low, self.high, self.step or 1)):
            raise ValueError("an int parameter needs whole numbers for low, high and step.")


@dataclass(frozen=True, kw_only=True)
class SpaceFile(Schema):
    """A search space document: parameter name -> range, in sampling order."""

    joiner: ClassVar[str] = ": "
    params: dict[StrictStr, ParamRange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.params:
            raise ValueError("the search space names no parameter; give e.g. lr: {type: float, low: 1e-4, high: "
                             "0.1, log: true}.")
        seen: list[str] = []
        for name, rng in self.params.items():
            for other in rng.when:
                if other not in seen:
                    raise ValueError(f"parameter {name!r}: 'when' names {other!r}, which is not a parameter declared "
                                     f"before it ({', '.join(seen) or 'none'}). Declare {other!r} first.")
            seen.append(name)


@dataclass(frozen=True, kw_only=True)
class StudyEntry(Schema):
    """A study of ``pipeline.yaml`` (``studies: NAME: ...``), or the flags of ``mltf-flow tune``."""

    entry: ClassVar[str] = "study"
    shape: ClassVar[str] = "step: ..., metric: ..., space: {...} or FILE"
    expect: ClassVar[dict[str, str]] = {"direction": "maximize or minimize",
                                        "space": "a mapping (parameter -> range) or a YAML file's path"}

    step: StrictStr
    metric: StrictStr
    space: dict[StrictStr, Any] | StrictStr
    direction: Literal["maximize", "minimize"] = "maximize"
    n_trials: Annotated[StrictInt, Ge(1)] = 20
    sampler: Sampler = "tpe"
    pruner: Pruner = "median"
    #: The sampler's seed (None: Optuna's own randomness).
    seed: StrictInt | None = None
    #: The entry point's defaults are trial 0 (the baseline the study has to beat).
    include_defaults: StrictBool = True
    #: Ranks of each trial of a ddp step (default 1: as many trials at once as the profile has workers).
    world_size: Annotated[StrictInt, Ge(1)] | None = None
    #: Trials at once; default: the profile's workers / world_size.
    n_jobs: Annotated[StrictInt, Ge(1)] | None = None


def read_space(data: Any, where: str) -> SpaceFile:
    """A search space from a mapping (``where``: the file, or the pipeline.yaml study it is in)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a search space mapping (parameter -> range), found "
                          f"{type(data).__name__}.")
    return validate(SpaceFile, {"params": dict(data)}, where)


def read_space_file(path: Path) -> SpaceFile:
    """``path`` (YAML) as a search space; a ConfigError names the file and the key."""
    try:
        data = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"search space file {path} does not exist. Write one, e.g.\n"
                          "  lr: {type: float, low: 1.0e-4, high: 0.1, log: true}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}.") from exc
    return read_space(data or {}, str(path))


__all__ = ["ParamRange", "Pruner", "Sampler", "SpaceFile", "StudyEntry", "read_space", "read_space_file"]
