"""pipeline.yaml's ``studies:`` section: a study tunes a step with an entry point of the same file, and every key
of a study is checked with the file, the study and the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mltf_flow.config.pipeline import read_pipeline_file
from mltf_flow.config.tune import StudyEntry
from mltf_flow.errors import ConfigError

STEPS = """\
steps:
  stage: {dataset: data/jet_sample}
  features: {entry_point: features, inputs: {manifest: stage}, outputs: {features: features.mltft}}
  train: {entry_point: train, inputs: {features: features.features}}
studies:
"""

#: A study's entry -> the message after "FILE: study 'sweep'".
BAD_STUDIES = [
    ("{step: nosuch, metric: acc, space: space.yaml}",
     " tunes step 'nosuch', which is not a step with an entry point here (those are: features, train)."),
    ("{step: stage, metric: acc, space: space.yaml}",
     " tunes step 'stage', which is not a step with an entry point here (those are: features, train)."),
    ("{step: train, metric: acc, space: space.yaml, direction: up}",
     ", key 'direction': expected maximize or minimize, found 'up'."),
    ("{step: train, metric: acc, space: space.yaml, n_trials: 0}",
     ", key 'n_trials': expected greater than or equal to 1, found 0."),
    ("{step: train, metric: acc, space: space.yaml, sampler: grid}", ", key 'sampler': expected one of 'tpe', "),
    ("{step: train, metric: acc, space: space.yaml, pruner: asha}", ", key 'pruner': expected one of 'none', "),
    ("{step: train, metric: acc, space: space.yaml, seed: lucky}", ", key 'seed': expected a whole number"),
    ("{step: train, metric: acc, space: 3}", ", key 'space': expected a mapping (parameter -> range) or a YAML"),
    ("{step: train, space: space.yaml}", ", key 'metric': missing, and it is required."),
    ("{step: train, metric: acc, space: space.yaml, trials: 5}",
     ": unknown key(s) trials; known: step, metric, space, direction, n_trials"),
    ("3", ": expected a mapping (step: ..., metric: ..., space: {...} or FILE), found 3."),
]


@pytest.mark.parametrize(("study", "named"), BAD_STUDIES, ids=[f"case{i}" for i in range(len(BAD_STUDIES))])
def test_a_bad_study_names_the_file_the_study_and_the_key(tmp_path: Path, study: str, named: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"{STEPS}  sweep: {study}\n")
    with pytest.raises(ConfigError) as info:
        read_pipeline_file(path)
    assert str(info.value).startswith(f"{path}: study 'sweep'{named}"), str(info.value)
    assert "\n" not in str(info.value)


def test_studies_are_read_with_their_defaults(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"{STEPS}  sweep: {{step: train, metric: val_accuracy, space: space.yaml}}\n"
                    "  inline:\n"
                    "    step: features\n    metric: loss\n    direction: minimize\n    n_trials: 3\n"
                    "    sampler: random\n    pruner: none\n    seed: 4\n"
                    "    space: {max_constituents: {type: int, low: 16, high: 64}}\n")
    studies = read_pipeline_file(path).studies
    assert studies["sweep"] == StudyEntry(step="train", metric="val_accuracy", space="space.yaml")
    assert (studies["sweep"].direction, studies["sweep"].n_trials, studies["sweep"].sampler,
            studies["sweep"].pruner) == ("maximize", 20, "tpe", "median")
    assert studies["inline"] == StudyEntry(step="features", metric="loss", direction="minimize", n_trials=3,
                                           sampler="random", pruner="none", seed=4,
                                           space={"max_constituents": {"type": "int", "low": 16, "high": 64}})


def test_a_file_without_studies_has_none(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(STEPS.removesuffix("studies:\n"))
    assert read_pipeline_file(path).studies == {}
