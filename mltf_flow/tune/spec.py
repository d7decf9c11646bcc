"""What a study is, as a value: its search space and settings, its identity and keys, and its Optuna parts.

A study has two fingerprints (sha256 of canonical JSON, like a step's cache key):

* its **identity**: the tuned step's key without the searched parameters (code, environment, inputs, the
  fixed parameters, the world size of a DDP trial), the space, the metric and direction, sampler, pruner,
  seed and the baseline trial. It names the Optuna study: the same identity is the same study, so running it
  again after an interruption, or with a larger ``n_trials``, continues it;
* its **key** (:attr:`StudySpec.key`): the identity and ``n_trials``; the study *run* is found by it, so a
  finished study with the same key is a cached no-op.

Samplers and pruners are made here from their names (Optuna's own classes; Optuna does not store them with
the study). optuna is imported only by the functions that make them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mltf_flow.cache_key import canonical_json
from mltf_flow.errors import ConfigError
from mltf_flow.redaction import strip_credentials
from mltf_flow.tune.space import SearchSpace

if TYPE_CHECKING:
    import optuna

    from mltf_flow.config import Settings
    from mltf_flow.step_def import ResolvedStep

STUDY_KEY_VERSION = 1


@dataclass(frozen=True)
class StudySpec:
    """A study's settings (see :class:`mltf_flow.config.tune.StudyEntry` for each meaning)."""

    space: SearchSpace
    metric: str
    direction: str = "maximize"
    n_trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None
    include_defaults: bool = True
    n_jobs: int | None = None
    #: A name the user chose (None: derived from the identity).
    name: str | None = None

    @property
    def optuna_direction(self) -> Literal["maximize", "minimize"]:
        return "minimize" if self.direction == "minimize" else "maximize"

    def identity(self, step: ResolvedStep) -> str:
        """The study's identity (see the module docstring) for the tuned step ``step``."""
        fixed = {k: v for k, v in step.params.items() if k not in self.space.params}
        doc = {
            "v": STUDY_KEY_VERSION,
            "step": dataclasses.replace(step, params=fixed).key,
            "space": self.space.canonical(),
            "metric": self.metric, "direction": self.direction, "sampler": self.sampler, "pruner": self.pruner,
            "seed": self.seed, "include_defaults": self.include_defaults,
        }
        return hashlib.sha256(canonical_json(doc).encode()).hexdigest()

    def key(self, step: ResolvedStep) -> str:
        """The study run's cache key: its identity and how many trials it runs."""
        doc: dict[str, Any] = {"study": self.identity(step), "n_trials": self.n_trials}
        if self.name:  # a study named by its user is its own, even over the same search (unnamed keys unchanged)
            doc["name"] = self.name
        return hashlib.sha256(canonical_json(doc).encode()).hexdigest()

    def study_name(self, step: ResolvedStep) -> str:
        return self.name or f"{step.pipeline}.{step.name}.{self.identity(step)[:12]}"

    def params(self) -> dict[str, str]:
        """The study's settings as MLflow params of its run."""
        return {"study.metric": self.metric, "study.direction": self.direction, "study.n_trials": str(self.n_trials),
                "study.sampler": self.sampler, "study.pruner": self.pruner, "study.seed": str(self.seed),
                "study.space": canonical_json(self.space.canonical())[:6000]}


def storage_url(settings: Settings) -> str:
    """Where studies live: the setting ``optuna_storage``, else ``optuna.db`` next to a sqlite MLflow store (in
    the work dir for a tracking server)."""
    if settings.optuna_storage:
        return settings.optuna_storage
    if settings.tracking_uri.startswith("sqlite:///"):
        store = settings.tracking_uri.removeprefix("sqlite:///")
        return f"sqlite:///{store.rpartition('/')[0]}/optuna.db"
    return f"sqlite:///{settings.work_dir / 'optuna.db'}"


def shown_storage(url: str) -> str:
    """A storage URL as it may be shown, tagged or logged (no password)."""
    return strip_credentials(url)


#: Packages a sampler needs beyond Optuna's own (it imports them only when the sampler first samples).
_SAMPLER_NEEDS = {"cmaes": ("cmaes",), "gp": ("torch", "scipy"), "qmc": ("scipy",)}


def make_sampler(spec: StudySpec, offset: int = 0) -> optuna.samplers.BaseSampler:
    """Optuna's sampler of that name: TPE (multivariate, grouped when the space is conditional, a constant liar
    for the trials running at once) unless another is named; a seeded one gets ``seed + offset``."""
    import warnings

    import optuna

    # group=True (what a conditional space needs) is "experimental" in Optuna: not news to our users.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    seed = None if spec.seed is None else spec.seed + offset
    # Optuna imports these packages lazily, at the first trial that samples with them: a missing one would
    # fail every trial but the first. Said here, before the study starts.
    missing = [name for name in _SAMPLER_NEEDS.get(spec.sampler, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"sampler {spec.sampler!r} needs {', '.join(missing)}, which is not installed here: pip "
                          f"install {' '.join(missing)}, or choose sampler tpe or random.")
    try:
        if spec.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=spec.space.conditional,
                                              constant_liar=True)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if spec.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed)
        if spec.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if spec.sampler == "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
    except ImportError as exc:
        raise ConfigError(f"sampler {spec.sampler!r} needs a package that is not installed ({exc}); install it "
                          "or choose sampler tpe or random.") from None
    raise ConfigError(f"sampler {spec.sampler!r} is not one of tpe, random, cmaes, gp, qmc.")


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Optuna's pruner of that name; each waits for 5 complete trials and prunes from the second report on."""
    import optuna

    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if spec.pruner == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=1)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    raise ConfigError(f"pruner {spec.pruner!r} is not one of none, median, percentile, hyperband, successive_halving.")


def typed_point(step: ResolvedStep, point: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's values as the entry point's parameter types (what its key is computed over)."""
    entry = step.entry
    return {name: entry.parameters[name].normalise(value, entry_point=entry.name) for name, value in point.items()}


__all__ = ["StudySpec", "make_pruner", "make_sampler", "shown_storage", "storage_url", "typed_point"]
