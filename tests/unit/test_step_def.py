"""The step as a value: both front ends describe the same step with the same key; the key follows the value
and nothing else; the plan phase resolves upstream outputs before any run exists."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import luigi
import pytest

from mltf_flow.config import Settings, load_settings
from mltf_flow.config.profiles import LocalProfile, SlurmProfile
from mltf_flow.errors import ConfigError
from mltf_flow.launch.base import StepTimeout
from mltf_flow.pipeline import PipelineStep
from mltf_flow.step import MLflowStep
from mltf_flow.step_def import ResolvedStep, StepDefinition, resolve, step_timeout
from mltf_flow.step_run import plan

MLPROJECT = """\
name: demo
entry_points:
  prep:
    parameters: {n: {type: float, default: 1}}
    command: "python prep.py --n {n}"
  fit:
    parameters: {data: path, lr: {type: float, default: 0.1}}
    command: "python fit.py --data {data} --lr {lr}"
"""
PIPELINE = """\
steps:
  prep: {entry_point: prep, outputs: {table: table.csv}}
  fit: {entry_point: fit, inputs: {data: prep.table}, outputs: {model: "model:m"}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    (root / "pipeline.yaml").write_text(PIPELINE)
    (root / "prep.py").write_text("print('prep')\n")
    (root / "fit.py").write_text("print('fit')\n")
    return root


class Stand:
    """A requirement as the step sees it (mltf_flow.step_def.Upstream): a key, outputs, lineage."""

    def __init__(self, key: str | None, outputs: dict[str, str], run_id: str | None = None,
                 manifest: Path | None = None) -> None:
        self.key, self.outputs, self.run_id, self.manifest = key, outputs, run_id, manifest

    def upstream_key(self) -> str | None:
        return self.key

    def dataset_inputs(self) -> list[dict[str, str]]:
        return [{"uri": "file:///data", "digest": "d1"}] if self.manifest else []

    def output_spec(self, output: str) -> str:
        return self.outputs[output or next(iter(self.outputs))]

    def resolve_output(self, output: str | None, settings: Settings) -> str:
        path = settings.work_dir / "inputs" / self.output_spec(output or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return str(path)

    def upstream_run_id(self) -> str | None:
        return self.run_id

    def manifest_file(self) -> Path | None:
        return self.manifest


def _python_prep(root: Path) -> type[MLflowStep]:
    class Prep(MLflowStep):
        project_dir = root
        entry_point = "prep"
        outputs = {"table": "table.csv"}
        n = luigi.FloatParameter(default=None)

    return Prep


def test_both_front_ends_give_the_same_key(project: Path) -> None:
    python = _python_prep(project)(n=2)
    yaml = PipelineStep(project_dir=str(project), run_step="prep", overrides={"n": "2"})
    assert python.definition().outputs == yaml.definition().outputs
    python_value, yaml_value = python.describe(), yaml.describe()
    assert python_value is not None and yaml_value is not None
    assert python_value.params == yaml_value.params == {"n": 2.0}
    assert python_value.key == yaml_value.key
    assert _python_prep(project)(n=3).cache_key() != python_value.key


def _fit(project: Path, requirement: str = "prep", **changes: Any) -> ResolvedStep | None:
    yaml_step = PipelineStep(project_dir=str(project), run_step="fit")
    definition = dataclasses.replace(yaml_step.definition(), inputs={"data": f"{requirement}.table"})
    upstream = {requirement: Stand("k-prep", {"table": "table.csv"}, run_id="r1")}
    value = resolve(definition, yaml_step.project(), {"lr": 0.1}, requirements=upstream,
                    code=yaml_step.code_version(), environment=yaml_step.environment(),
                    profile=yaml_step.cluster_profile(), world_size=None)
    return dataclasses.replace(value, **changes) if value is not None and changes else value


def test_the_key_is_a_function_of_the_value(project: Path) -> None:
    one, two = _fit(project), _fit(project)
    assert one is not None and two is not None
    assert one == two and one.key == two.key
    # What feeds a parameter counts, not what the requirement is called in one front end or the other.
    renamed = _fit(project, requirement="table_maker")
    assert renamed is not None and renamed.key == one.key
    assert _fit(project, params={"lr": 0.2}).key != one.key  # type: ignore[union-attr]
    assert _fit(project, upstream={"prep": "k-other"}).key != one.key  # type: ignore[union-attr]
    assert one.with_code(one.code.without(["fit.py"])).key != one.key


def test_no_value_while_an_upstream_result_is_missing(project: Path) -> None:
    yaml_step = PipelineStep(project_dir=str(project), run_step="fit")
    value = resolve(yaml_step.definition(), yaml_step.project(), {"lr": 0.1},
                    requirements={"prep": Stand(None, {"table": "table.csv"})}, code=yaml_step.code_version(),
                    environment=yaml_step.environment(), profile=yaml_step.cluster_profile(), world_size=None)
    assert value is None


def test_an_input_from_a_requirement_the_step_lacks_is_named(project: Path) -> None:
    yaml_step = PipelineStep(project_dir=str(project), run_step="fit")
    with pytest.raises(ConfigError, match=r"inputs maps 'data' to 'prep.table'.*they are: other"):
        resolve(yaml_step.definition(), yaml_step.project(), {"lr": 0.1},
                requirements={"other": Stand("k", {"t": "t"})}, code=yaml_step.code_version(),
                environment=yaml_step.environment(), profile=yaml_step.cluster_profile(), world_size=None)


def test_a_definition_refuses_an_unknown_launcher(project: Path) -> None:
    with pytest.raises(ConfigError, match="run_on 'gpu' is not one of driver, worker, ddp"):
        StepDefinition(project_dir=project, entry_point="fit", run_on="gpu")


def test_plan_resolves_inputs_and_lineage_before_a_run(project: Path, tmp_path: Path) -> None:
    value = _fit(project)
    assert value is not None
    manifest = tmp_path / "manifest.json"
    requirements = {"prep": Stand("k-prep", {"table": "table.csv"}, run_id="r1"),
                    "data": Stand("k-data", {"m": "manifest"}, manifest=manifest)}
    settings = load_settings()
    planned = plan(value, requirements, settings, "Fit_task")
    table = settings.work_dir / "inputs" / "table.csv"
    assert planned.params == {"lr": 0.1, "data": str(table)}
    assert f"--data {table}" in planned.command
    assert planned.upstream_runs == {"prep": "r1"}
    assert planned.manifests == {"data": manifest}


# -- timeouts: the step's own, else its profile's; a SLURM profile's walltime bounds both -----------------------


def _with_timeout(project: Path, step_value: float | None, profile: Any) -> Any:
    definition = dataclasses.replace(PipelineStep(project_dir=str(project), run_step="prep").definition(),
                                     timeout=step_value, timeout_source="pipeline.yaml: step 'prep', key 'timeout'")
    return step_timeout(definition, profile)


def test_the_steps_timeout_wins_over_the_profiles(project: Path) -> None:
    profile = LocalProfile(name="p", timeout=60.0, sources={"timeout": "/etc/p.yaml"})
    assert _with_timeout(project, 5.0, profile) == StepTimeout(5.0, "pipeline.yaml: step 'prep', key 'timeout'")
    assert _with_timeout(project, None, profile) == StepTimeout(60.0, "/etc/p.yaml: profile 'p', key 'timeout'")
    assert _with_timeout(project, None, LocalProfile(name="p")) is None


def test_a_timeout_beyond_a_slurm_walltime_is_an_input_error(project: Path) -> None:
    slurm = SlurmProfile(name="gpu", walltime="00:30:00", sources={"walltime": "/site/profiles.yaml"})
    assert _with_timeout(project, 1800.0, slurm) is not None  # exactly the walltime: fine
    with pytest.raises(ConfigError) as info:
        _with_timeout(project, 7200.0, slurm)
    message = str(info.value)
    assert message.startswith("pipeline.yaml: step 'prep', key 'timeout': step 'prep' has timeout 02:00:00, longer "
                              "than walltime 00:30:00 of its SLURM profile 'gpu' (/site/profiles.yaml)")
    assert 'at most "00:30:00"' in message and "\n" not in message


def test_a_python_step_declares_its_timeout_as_a_class_attribute(project: Path) -> None:
    prep = _python_prep(project)
    timed = type("Timed", (prep,), {"timeout": "01:30:00"})
    assert timed().definition().timeout == 5400.0
    assert timed().definition().timeout_source == "Timed.timeout"
    bad = type("Bad", (prep,), {"timeout": "soon"})
    with pytest.raises(ConfigError, match=r"Bad\.timeout: expected a duration like 90s"):
        bad().definition()
