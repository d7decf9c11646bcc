"""A declared study (:class:`mltf_flow.config.tune.StudyEntry`: ``pipeline.yaml``, flags, a TuneStep's attributes)
resolved against its step into a :class:`mltf_flow.tune.spec.StudySpec`: the space read and checked against the
entry point, the metric named. Every error says where the study was declared."""

from __future__ import annotations

from pathlib import Path

from mltf_flow.config.tune import StudyEntry, read_space, read_space_file
from mltf_flow.errors import ConfigError
from mltf_flow.mlproject import EntryPoint
from mltf_flow.step_def import StepDefinition
from mltf_flow.tune.space import check_space
from mltf_flow.tune.spec import StudySpec


def study_spec(entry: StudyEntry, definition: StepDefinition, entry_point: EntryPoint, *, where: str,
               name: str | None = None) -> StudySpec:
    """The study ``entry`` of ``definition``'s step (``where``: its declaration, for messages)."""
    if not entry.metric:
        raise ConfigError(f"{where}: no metric to optimise; name one the entry point {entry_point.name!r} logs "
                          "(--metric val_accuracy, `metric:` in pipeline.yaml, or objective = \"...\" on the step).")
    if isinstance(entry.space, str):
        if not entry.space:
            raise ConfigError(f"{where}: no search space; give a YAML file (--space space.yaml) or a mapping, e.g. "
                              "lr: {type: float, low: 1.0e-4, high: 0.1, log: true}.")
        path = Path(entry.space)
        path = path if path.is_absolute() else definition.project_dir / path
        space, source = read_space_file(path), str(path)
    else:
        source = f"{where}, key 'space'"
        space = read_space(entry.space, source)
    checked = check_space(space, entry_point, fed=definition.inputs, source=source)
    return StudySpec(space=checked, metric=entry.metric, direction=entry.direction, n_trials=entry.n_trials,
                     sampler=entry.sampler, pruner=entry.pruner, seed=entry.seed,
                     include_defaults=entry.include_defaults, n_jobs=entry.n_jobs, name=name)


__all__ = ["study_spec"]
