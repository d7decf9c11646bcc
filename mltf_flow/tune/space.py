"""A search space over an entry point's parameters: checked against ``MLproject``, sampled through an Optuna trial.

The YAML's types are :mod:`mltf_flow.config.tune`; this module adds what needs the project (every name is a
parameter of the entry point, of a type the range fits, not one filled from an upstream step) and the one
place where a range becomes an Optuna ``suggest_*`` call. Conditional parameters (``when``) are sampled only
when their condition holds; otherwise the entry point gets its own value for them (the step's, or MLproject's
default), so a trial is always a complete set of parameters whose cache key is the step's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mltf_flow.config.tune import ParamRange, SpaceFile
from mltf_flow.errors import ConfigError
from mltf_flow.mlproject import EntryPoint

if TYPE_CHECKING:
    import optuna

#: MLproject types a range may feed: a float range a float parameter, an int range an int or float one.
_FITS = {"float": ("float",), "int": ("int", "float"), "categorical": ("string", "str", "int", "float")}


@dataclass(frozen=True)
class SearchSpace:
    """The checked space of one entry point (see the module docstring)."""

    params: Mapping[str, ParamRange]
    #: Where it was declared (a file, or pipeline.yaml's study), for messages.
    source: str

    @property
    def conditional(self) -> bool:
        return any(rng.when for rng in self.params.values())

    def canonical(self) -> dict[str, Any]:
        """The space as JSON-able values, in declaration order (part of the study's identity)."""
        out: dict[str, Any] = {}
        for name, rng in self.params.items():
            item: dict[str, Any] = {"type": rng.type}
            if rng.type == "categorical":
                item["choices"] = list(rng.choices)
            else:
                item.update(low=rng.low, high=rng.high, log=rng.log, step=rng.step)
            if rng.when:
                item["when"] = {k: list(v) for k, v in rng.when.items()}
            out[name] = item
        return out

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """One point of the space, sampled through ``trial`` (conditions decided in declaration order)."""
        chosen: dict[str, Any] = {}
        for name, rng in self.params.items():
            if any(chosen.get(other, _ABSENT) not in allowed for other, allowed in rng.when.items()):
                continue
            if rng.type == "categorical":
                chosen[name] = trial.suggest_categorical(name, list(rng.choices))
            elif rng.type == "int":
                assert isinstance(rng.low, int) and isinstance(rng.high, int)
                chosen[name] = trial.suggest_int(name, rng.low, rng.high, step=int(rng.step or 1), log=rng.log)
            else:
                assert rng.low is not None and rng.high is not None
                chosen[name] = trial.suggest_float(name, float(rng.low), float(rng.high),
                                                   step=None if rng.step is None else float(rng.step), log=rng.log)
        return chosen

    def defaults_point(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The step's own values of the space's parameters (conditions applied), for the baseline trial; a
        ConfigError when one is not a choice of its categorical range (Optuna could not record that trial)."""
        chosen: dict[str, Any] = {}
        for name, rng in self.params.items():
            if any(chosen.get(other, _ABSENT) not in allowed for other, allowed in rng.when.items()):
                continue
            if rng.type == "categorical" and params[name] not in rng.choices:
                raise ConfigError(
                    f"{self.source}: parameter {name!r}: the step's value {params[name]!r} (trial 0, the baseline) "
                    f"is not one of its choices {list(rng.choices)}. Add it to the choices, or leave the baseline "
                    "out (include_defaults: false).")
            chosen[name] = params[name]
        return chosen


_ABSENT = object()


def check_space(space: SpaceFile, entry: EntryPoint, *, fed: Mapping[str, str], source: str) -> SearchSpace:
    """``space`` checked against the entry point (``fed``: its parameters filled from upstream steps)."""
    problems: list[str] = []
    for name, rng in space.params.items():
        param = entry.parameters.get(name)
        if name in fed:
            problems.append(f"parameter {name!r} is filled from step output {fed[name]!r}: it cannot be searched.")
        elif param is None:
            known = ", ".join(p for p in entry.parameters if p not in fed) or "none"
            problems.append(f"parameter {name!r} is not a parameter of entry point {entry.name!r} (it has: {known}).")
        elif param.type not in _FITS[rng.type]:
            problems.append(f"parameter {name!r} has type {param.declared_type} in MLproject; a {rng.type} range "
                            f"cannot feed it.")
        elif rng.type == "categorical" and param.type in ("int", "float"):
            bad = [c for c in rng.choices if isinstance(c, bool) or not isinstance(c, int | float)
                   or (param.type == "int" and not isinstance(c, int))]
            if bad:
                problems.append(f"parameter {name!r} has type {param.declared_type} in MLproject; choices {bad} "
                                "are not.")
    if problems:
        raise ConfigError(f"{source}: " + "\n  ".join(problems))
    return SearchSpace(dict(space.params), source)


__all__ = ["SearchSpace", "check_space"]
