"""pipeline.yaml: steps, dependencies and every validation error; scoped overrides; -P parsing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mltf_flow.cli import main
from mltf_flow.errors import ConfigError
from mltf_flow.pipeline import StepSpec, load_pipeline, scoped_overrides
from mltf_flow.pipeline_run import parse_params as _parse_params

REPO = Path(__file__).resolve().parents[2]
JET = REPO / "pipelines" / "jet_tagging"

VALID = """\
name: toy_pipeline
steps:
  stage:
    dataset: data/jet_sample
  features:
    entry_point: features
    inputs: {manifest: stage}
    outputs: {features: features.npz}
    code: [features.py]
  train:
    entry_point: train
    inputs: {features: features.features}
    outputs: {model: "model:jet_tagger"}
    code: [train.py]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the example project without its pipeline.yaml."""
    root = tmp_path / "proj"
    shutil.copytree(JET, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "pipeline.yaml"))
    return root.resolve()


def with_pipeline(root: Path, text: str) -> Path:
    (root / "pipeline.yaml").write_text(textwrap.dedent(text))
    return root


def test_example_pipeline() -> None:
    spec = load_pipeline(JET)
    assert spec.declared and spec.name == "jet_tagging" and spec.root == JET.resolve()
    assert list(spec.steps) == ["stage", "features", "train", "train_fsdp"]
    stage, features, train, train_fsdp = spec.steps.values()
    assert stage.is_stage and stage.dataset == "data/jet_sample" and stage.dependencies() == []
    assert features.entry_point == "features" and not features.is_stage
    assert features.inputs == {"manifest": "stage"} and features.dependencies() == ["stage"]
    assert features.outputs == {"features": "features.mltft"} and features.code == ("features.py",)
    assert train.inputs == {"features": "features.features"} and train.dependencies() == ["features"]
    assert train.outputs == {"model": "model:jet_tagger", "metrics": "metrics.json"}
    assert train.run_on == "ddp" and train.gpu and train.world_size is None  # one rank per worker of the profile
    assert spec.step("train") is train
    assert train_fsdp.inputs == train.inputs and train_fsdp.run_on == "ddp" and train_fsdp.gpu
    assert train_fsdp.outputs == {"metrics": "metrics.json"} and train_fsdp.code == ("train_fsdp.py",)


def test_unknown_step_lists_steps() -> None:
    with pytest.raises(ConfigError, match="no step 'evaluate'; steps are: stage, features, train, train_fsdp"):
        load_pipeline(JET).step("evaluate")


def test_requires_adds_ordering_dependencies(project: Path) -> None:
    text = VALID.replace("    code: [train.py]\n", "    code: [train.py]\n    requires: [stage, features]\n")
    spec = load_pipeline(with_pipeline(project, text))
    assert spec.name == "toy_pipeline"
    assert spec.steps["train"].requires == ("stage", "features")
    assert spec.steps["train"].dependencies() == ["features", "stage"]


def test_pipeline_name_defaults_to_mlproject_name(project: Path) -> None:
    spec = load_pipeline(with_pipeline(project, VALID.replace("name: toy_pipeline\n", "")))
    assert spec.name == "jet_tagging"


INVALID = [
    ("inputs: {manifest: stage}", "inputs: {manifest: stagee}",
     "input 'manifest' names unknown step 'stagee'"),
    ("{features: features.features}", "{features: features.feats}",
     "wants output 'feats' of 'features', which declares ['features']"),
    ("{features: features.features}", "{features: stage.manifest}",
     "wants output 'manifest' of 'stage', which declares no outputs"),
    ("    code: [features.py]\n", "    code: [features.py]\n    requires: [train]\n",
     "steps form a cycle: features -> train -> features"),
    ("    code: [train.py]\n", "    code: [train.py]\n    requires: [train]\n",
     "steps form a cycle: train -> train"),
    ("    dataset: data/jet_sample\n", "    dataset: data/jet_sample\n    entry_point: train\n",
     "step 'stage': give either 'entry_point'"),
    ("    dataset: data/jet_sample\n", "    outputs: {x: y}\n",
     "step 'stage': give either 'entry_point'"),
    ("    entry_point: train\n", "    entry_point: train\n    entrypoint: train\n",
     "step 'train': unknown key(s) entrypoint; known: entry_point, dataset, "),
    ("entry_point: train", "entry_point: evaluate",
     "no entry point 'evaluate'; entry points are: features, generate, train"),
    ("    code: [train.py]\n", "    code: [train.py]\n    requires: [lint]\n",
     "requires unknown step 'lint'"),
    ("    dataset: data/jet_sample\n", "    dataset: data/jet_sample\n    inputs: {x: train}\n",
     "a stage step has no inputs or outputs"),
    ("code: [train.py]", "code: {train.py: 1}",
     "step 'train', key 'code': expected 'auto' or a list of paths/globs, found {'train.py': 1}."),
    ("inputs: {manifest: stage}", "inputs: [stage]",
     "step 'features', key 'inputs': expected a mapping of parameter: step or step.output, found ['stage']."),
    ("  stage:\n    dataset: data/jet_sample\n", "  stage: data/jet_sample\n",
     "step 'stage': expected a mapping (entry_point: ..., inputs: {...}, outputs: {...}; or dataset: ...), "
     "found 'data/jet_sample'."),
]


@pytest.mark.parametrize(("old", "new", "message"), INVALID)
def test_invalid_pipelines(project: Path, old: str, new: str, message: str) -> None:
    assert old in VALID
    with_pipeline(project, VALID.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_pipeline(project)
    assert message in str(info.value)
    assert "pipeline.yaml" in str(info.value) or "MLproject" in str(info.value)


def test_a_typo_gets_a_hint(project: Path) -> None:
    with_pipeline(project, VALID.replace("    code: [train.py]\n", "    code: [train.py]\n    worldsize: 2\n"))
    with pytest.raises(ConfigError, match=r"step 'train': unknown key\(s\) worldsize; .* Did you mean 'world_size'\?"):
        load_pipeline(project)


def test_unknown_top_level_key(project: Path) -> None:
    with_pipeline(project, VALID.replace("name: toy_pipeline", "nmae: toy_pipeline"))
    with pytest.raises(ConfigError,
                       match=r"pipeline\.yaml: unknown key\(s\) nmae; known: name, steps, studies\. Did you mean"):
        load_pipeline(project)


def test_world_size_needs_ddp(project: Path) -> None:
    with_pipeline(project, VALID.replace("    code: [train.py]\n", "    code: [train.py]\n    world_size: 2\n"))
    with pytest.raises(ConfigError, match="step 'train': world_size is for steps with run_on: ddp"):
        load_pipeline(project)


def test_a_step_timeout_is_seconds(project: Path) -> None:
    with_pipeline(project, VALID.replace("    code: [train.py]\n", "    code: [train.py]\n    timeout: 2h\n"))
    steps = load_pipeline(project).steps
    assert steps["train"].timeout == 7200.0 and steps["features"].timeout is None


@pytest.mark.parametrize(("value", "message"), [
    ("soon", "step 'train', key 'timeout': expected a duration like 90s, 30m or 2h"),
    ("0", "key 'timeout'"),
])
def test_a_bad_step_timeout_names_step_and_key(project: Path, value: str, message: str) -> None:
    with_pipeline(project, VALID.replace("    code: [train.py]\n", f"    code: [train.py]\n    timeout: {value}\n"))
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_pipeline(project)
    assert "pipeline.yaml" in str(info.value)


def test_a_stage_step_has_no_timeout(project: Path) -> None:
    stage = "    dataset: data/jet_sample\n"
    with_pipeline(project, VALID.replace(stage, f"{stage}    timeout: 1h\n"))
    with pytest.raises(ConfigError, match="step 'stage': a stage step runs no command: remove timeout"):
        load_pipeline(project)


#: Load a pipeline in a fresh process; print whether pydantic was imported.
PROBE = textwrap.dedent("""
    import sys
    from mltf_flow.pipeline import load_pipeline
    spec = load_pipeline(sys.argv[1])
    print(spec.name, ",".join(spec.steps), "pydantic" in sys.modules)
""")


def test_a_rerun_reads_the_remembered_pipeline_without_pydantic(project: Path, tmp_path: Path) -> None:
    with_pipeline(project, VALID)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def probe() -> list[str]:
        run = subprocess.run([sys.executable, "-c", PROBE, str(project)], env=env, capture_output=True, text=True,
                             check=False)
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    assert probe() == ["toy_pipeline", "stage,features,train", "True"]  # validated: pydantic was needed
    assert probe() == ["toy_pipeline", "stage,features,train", "False"]  # remembered: it was not
    with_pipeline(project, VALID.replace("entry_point: train", "entry_point: evaluate"))
    run = subprocess.run([sys.executable, "-c", PROBE, str(project)], env=env, capture_output=True, text=True,
                         check=False)
    assert "step 'train', key 'entry_point'" in run.stderr  # an edit is seen at once


def test_invalid_dataset_is_a_config_error(project: Path) -> None:
    with_pipeline(project, VALID.replace("dataset: data/jet_sample", "dataset: s3://bucket/jets"))
    with pytest.raises(ConfigError, match="scheme 's3' is not supported"):
        load_pipeline(project)


def test_invalid_dataset_error_says_where(project: Path) -> None:
    with_pipeline(project, VALID.replace("dataset: data/jet_sample", "dataset: s3://bucket/jets"))
    with pytest.raises(ConfigError) as info:
        load_pipeline(project)
    assert "pipeline.yaml" in str(info.value) and "'stage'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("name: x\n", "needs a 'steps' mapping"), ("steps: {}\n", "needs a 'steps' mapping"),
     ("steps: [a, b]\n", "needs a 'steps' mapping"), ("steps: {a: [\n", "not valid YAML")],
)
def test_invalid_pipeline_files(project: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_pipeline(with_pipeline(project, text))


@pytest.mark.parametrize("text", ["- stage\n- train\n", "just text\n"])
def test_pipeline_file_that_is_not_a_mapping(project: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"pipeline\.yaml"):
        load_pipeline(with_pipeline(project, text))


def test_project_without_pipeline_file_has_one_step_per_entry_point(project: Path) -> None:
    spec = load_pipeline(project)
    assert not spec.declared and spec.name == "jet_tagging"
    assert spec.steps == {n: StepSpec(name=n, entry_point=n) for n in ("generate", "features", "train", "train_fsdp")}
    assert all(s.dependencies() == [] and s.code == ("auto",) for s in spec.steps.values())
    assert spec.step("train.py") == StepSpec(name="train.py", entry_point="train.py")
    with pytest.raises(ConfigError, match="entry points are: features, generate, train, train_fsdp"):
        spec.step("evaluate")
    with pytest.raises(ConfigError, match=r"no entry point 'missing\.py'"):
        spec.step("missing.py")


def test_declared_pipeline_accepts_a_script_step(project: Path) -> None:
    with_pipeline(project, "steps:\n  gen:\n    entry_point: generate.py\n    outputs: {data: data}\n")
    spec = load_pipeline(project)
    assert spec.steps["gen"].entry_point == "generate.py"


# -- overrides -------------------------------------------------------------------------------------------

STEPS = {"stage": None, "features": None, "train": None}
OVERRIDES = {"epochs": 3, "features.max_constituents": 32, "train.lr": 0.1, "stage.dataset": "/d", "a.b": 1}


@pytest.mark.parametrize(
    ("step", "target", "expected"),
    [
        ("train", "train", {"epochs": 3, "lr": 0.1, "a.b": 1}),
        ("features", "train", {"max_constituents": 32}),
        ("stage", "train", {"dataset": "/d"}),
        ("features", "features", {"epochs": 3, "max_constituents": 32, "a.b": 1}),
        ("train", "features", {"lr": 0.1}),
    ],
)
def test_scoped_overrides(step: str, target: str, expected: dict[str, object]) -> None:
    assert scoped_overrides(OVERRIDES, step, target, STEPS) == expected


def test_scoped_overrides_of_an_undeclared_step_pipeline() -> None:
    given = {"train.lr": 1, "epochs": 2}
    assert scoped_overrides(given, "train", "train", {}) == given


# -- -P KEY=VALUE ----------------------------------------------------------------------------------------


def test_parse_params() -> None:
    items = ["epochs=3", "train.lr=0.1", "expr=a=b", "empty=", "epochs=4"]
    assert _parse_params(items) == {"epochs": "4", "train.lr": "0.1", "expr": "a=b", "empty": ""}


@pytest.mark.parametrize("item", ["epochs", "=3", ""])
def test_parse_params_rejects_items_without_key_or_equals(item: str) -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        _parse_params([item])


def test_parse_params_rejects_blank_key() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        _parse_params(["  =3"])


def test_cli_reports_bad_param_as_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(JET), "--step", "train", "-P", "epochs"]) == 2
    err = capsys.readouterr().err
    assert "mltf-flow: error:" in err and "'epochs'" in err
