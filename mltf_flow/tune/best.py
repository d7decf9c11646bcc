"""A finished study's best trial, read back from the Optuna storage for ``--from-study`` (a step trained with it).

The study keeps what its trials ran with (user attributes written by :func:`mltf_flow.tune.study.open_study`):
the tuned step's fixed parameters and the trials' world size. With the best trial's sampled values they are the
complete parameters of the best trial's run, so a step given ``--from-study`` and nothing else has that run's key
and is complete at once (the best trial *is* its run); any parameter given explicitly wins (``--epochs 40``
trains the best configuration for longer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.errors import ConfigError

if TYPE_CHECKING:
    from mltf_flow.config import Settings
    from mltf_flow.mlproject import EntryPoint


@dataclass(frozen=True)
class BestTrial:
    """The best trial of a study: every parameter it ran with, its world size, value and run."""

    study: str
    params: Mapping[str, Any] = field(default_factory=dict)
    world_size: int | None = None
    value: float | None = None
    run_id: str | None = None

    def under(self, given: Mapping[str, Any], entry: EntryPoint, inputs: Iterable[str]) -> dict[str, Any]:
        """``given`` over this trial's values of ``entry``'s parameters (none filled from ``inputs``)."""
        filled = set(inputs)
        return {**{k: v for k, v in self.params.items() if k in entry.parameters and k not in filled}, **given}


def best_of(name: str, settings: Settings, *, step: str) -> BestTrial:
    """The best trial of study ``name`` in the configured storage (a ConfigError that says what to do if there
    is none, or if the study tuned another step than ``step``)."""
    import optuna

    from mltf_flow.tune.spec import shown_storage, storage_url
    from mltf_flow.tune.study import ATTR_FIXED, ATTR_STEP, ATTR_WORLD_SIZE

    url = storage_url(settings)
    # Optuna would create a missing sqlite file (and fail without a word of ours where its folder is missing).
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise ConfigError(f"--from-study {name!r}: no studies yet ({shown_storage(url)} does not exist). Run the "
                          "study first (mltf-flow tune ... or luigi ... Tune).")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        names = optuna.get_all_study_names(storage=url)
        raise ConfigError(f"--from-study {name!r}: no such study in {shown_storage(url)} (studies there: "
                          f"{', '.join(names) or 'none'}). Use the name `mltf-flow tune` printed.") from None
    tuned = study.user_attrs.get(ATTR_STEP)
    if tuned != step:
        raise ConfigError(f"--from-study {name!r} tuned step {tuned!r}, not {step!r}: give it to that step.")
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"--from-study {name!r}: the study has no complete trial yet; run it first "
                          "(mltf-flow tune ... or luigi ... Tune).") from None
    fixed = dict(study.user_attrs.get(ATTR_FIXED) or {})
    size = study.user_attrs.get(ATTR_WORLD_SIZE)
    return BestTrial(name, {**fixed, **best.params}, int(size) if size else None, best.value,
                     best.user_attrs.get("mlflow_run_id"))


__all__ = ["BestTrial", "best_of"]
