"""`mltf-flow init DIR`: the files it writes for a user's own MLproject (or the shipped example), that the
Luigi module it writes imports cheaply with the right parameters, and that bad input is one line, exit 2."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mltf_flow.errors import ConfigError
from mltf_flow.pipeline import load_pipeline
from mltf_flow.scaffold import class_name, example_dir, init_project
from tests.helpers import BIN, REPO, run_cmd

USER_MLPROJECT = """\
name: dimuon-fit
entry_points:
  main:
    parameters:
      n_events: {type: int, default: 1000}
      threshold: {type: float, default: 0.25}
      data_path: path
      label: {type: string, default: signal}
      tag: string
      out_dir: {type: path, default: results}
      source: {type: uri, default: "file:///data/x"}
    command: python fit.py --n {n_events}
  train-model:
    parameters:
      epochs: int
      lr: float
    command: python train.py --epochs {epochs} --lr {lr}
"""

# Imports the generated module in a fresh interpreter (Luigi registers task classes globally) and describes
# each class: project_dir, entry_point, and each Luigi parameter's class and whether its default is None.
DESCRIBE = """
import importlib, json, sys
import luigi
from luigi.parameter import _no_value
from mltf_flow.step import MLflowStep
own = {p for p, _ in MLflowStep.get_params()}  # the base class's own (profile, ...), not the entry point's
mod = importlib.import_module(sys.argv[1])
out = {"heavy": sorted(m for m in ("mlflow", "dask", "distributed", "torch") if m in sys.modules), "classes": {}}
for name in mod.__all__:
    cls = getattr(mod, name)
    params = {p: [type(obj).__name__, obj._default is not _no_value and obj._default is None]
              for p, obj in cls.get_params() if p not in own}
    out["classes"][name] = {"project_dir": str(getattr(cls, "project_dir", "")),
                            "entry_point": getattr(cls, "entry_point", None), "params": params}
print(json.dumps(out))
"""


def describe(directory: Path, module: str = "pipeline_steps") -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(directory)}
    env.pop("LUIGI_CONFIG_PATH", None)
    proc = subprocess.run([sys.executable, "-c", DESCRIBE, module], cwd=directory, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    project = tmp_path / "analysis"
    project.mkdir()
    (project / "MLproject").write_text(USER_MLPROJECT)
    (project / "fit.py").write_text("print('fit')\n")
    return project


def test_init_on_a_user_project_writes_module_pipeline_and_luigi_cfg(user_project: Path) -> None:
    mlproject = (user_project / "MLproject").read_text()
    result = init_project(user_project)
    assert sorted(result.written) == [".gitignore", "luigi.cfg", "pipeline.yaml", "pipeline_steps.py"]
    assert (user_project / ".gitignore").read_text().splitlines()[-1] == ".mltf/"  # the store stays out of git
    assert (user_project / "MLproject").read_text() == mlproject  # theirs, untouched
    assert not result.example and result.target == "Main"

    described = describe(user_project)
    assert described["heavy"] == []  # Luigi imports the module on every invocation: it must stay cheap
    classes = described["classes"]
    assert isinstance(classes, dict)
    assert set(classes) == {"Main", "TrainModel"}
    main = classes["Main"]
    assert main["project_dir"] == str(user_project.resolve())
    assert main["entry_point"] == "main"
    # [Luigi parameter class, default is None (= the MLproject default)]
    assert main["params"] == {
        "n_events": ["OptionalIntParameter", True],
        "threshold": ["OptionalFloatParameter", True],
        "data_path": ["Parameter", False],  # no default in MLproject: required
        "label": ["OptionalParameter", True],
        "tag": ["Parameter", False],
        "out_dir": ["OptionalParameter", True],
        "source": ["OptionalParameter", True],
    }
    assert classes["TrainModel"]["entry_point"] == "train-model"
    assert classes["TrainModel"]["params"] == {"epochs": ["IntParameter", False], "lr": ["FloatParameter", False]}

    spec = load_pipeline(user_project)  # the pipeline.yaml is valid and has every entry point as a step
    assert spec.declared and spec.name == "dimuon-fit"
    assert {name: s.entry_point for name, s in spec.steps.items()} == {"main": "main", "train-model": "train-model"}
    text = (user_project / "pipeline.yaml").read_text()
    for word in ("inputs:", "outputs:", "run_on:"):
        assert f"# {word}" in text
    # Both front ends leave the generated module out of the steps' code (it describes the pipeline).
    assert all(s.code == ("auto", "!pipeline_steps.py") for s in spec.steps.values())
    assert "code_paths = ('auto', '!pipeline_steps.py')" in (user_project / "pipeline_steps.py").read_text()

    cfg = configparser.ConfigParser()
    cfg.read(user_project / "luigi.cfg")
    assert dict(cfg["retcode"]) == {"already_running": "10", "missing_data": "20", "not_run": "25",
                                    "task_failed": "30", "scheduling_error": "35", "unhandled_exception": "40"}
    assert cfg["core"]["autoload_range"] == "false"


def test_generated_module_passes_ruff_and_its_steps_normalise_parameters(user_project: Path) -> None:
    init_project(user_project)
    module = user_project / "pipeline_steps.py"
    for config in (["--isolated"], ["--config", str(REPO / "pyproject.toml")]):
        lint = run_cmd([str(BIN / "ruff"), "check", "--no-cache", *config, str(module)], cwd=user_project)
        assert lint.returncode == 0, lint.output
    # The step's parameters reach the entry point typed by MLproject, defaults merged; a required one is required.
    check = """
import luigi, pipeline_steps as m
step = m.Main(data_path="in.root", tag="v1", threshold=1e-1)
print(sorted(step.params().items()))
try:
    m.TrainModel(epochs=3)
except luigi.parameter.MissingParameterException as exc:
    print("missing:", exc)
"""
    env = {"PYTHONPATH": str(user_project), "MLTF_FLOW_WORK_DIR": str(user_project / ".mltf")}
    out = run_cmd([sys.executable, "-c", check], env=env, cwd=user_project)
    assert out.returncode == 0, out.output
    assert ("('n_events', 1000)" in out.stdout and "('threshold', 0.1)" in out.stdout
            and f"('data_path', '{user_project.resolve() / 'in.root'}')" in out.stdout), out.stdout
    assert "missing:" in out.stdout and "lr" in out.stdout


def test_init_refuses_to_overwrite_unless_forced(user_project: Path) -> None:
    init_project(user_project, module="steps")
    (user_project / "pipeline.yaml").write_text("# mine\n")
    with pytest.raises(ConfigError, match=r"already has pipeline\.yaml.*--force"):
        init_project(user_project, module="steps")
    assert (user_project / "pipeline.yaml").read_text() == "# mine\n"
    again = init_project(user_project, module="steps", force=True)
    assert again.written == ["pipeline.yaml"]
    assert sorted(again.unchanged) == ["luigi.cfg", "steps.py"]
    assert "entry_point: main" in (user_project / "pipeline.yaml").read_text()


def test_cli_refusal_and_bad_input_are_one_line_exit_2(user_project: Path, tmp_path: Path) -> None:
    (user_project / "luigi.cfg").write_text("[core]\n")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "MLproject").write_text("name: x\nentry_points: [oops\n")
    no_eps = tmp_path / "no_eps"
    no_eps.mkdir()
    (no_eps / "MLproject").write_text("name: x\n")
    cases = [
        ([str(user_project)], "luigi.cfg"),
        ([str(a_file)], "is a file"),
        ([str(user_project), "--module", "1steps"], "not a Python module name"),
        ([str(user_project), "--module", "class"], "not a Python module name"),
        ([str(user_project), "--module", "json"], "would shadow"),
        ([str(user_project), "--module", "mlflow"], "would shadow"),
        ([str(user_project), "--module", "fit"], "script of entry point 'main'"),
        ([str(broken)], "not valid YAML"),
        ([str(no_eps)], "declares no entry points"),
        ([str(tmp_path / "new"), "--module", "train"], "script of the example project"),
    ]
    for args, message in cases:
        result = run_cmd([str(BIN / "mltf-flow"), "init", *args])
        assert result.returncode == 2, (args, result.output)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mltf-flow: error: ") and message in lines[0], (args, lines)
    assert (user_project / "luigi.cfg").read_text() == "[core]\n"
    assert not (user_project / "pipeline_steps.py").exists()  # a refusal writes nothing


def test_init_in_an_empty_dir_copies_the_example(tmp_path: Path) -> None:
    target = tmp_path / "new" / "jets"  # created
    result = run_cmd([str(BIN / "mltf-flow"), "init", str(target), "--module", "jets"], cwd=tmp_path)
    assert result.returncode == 0, result.output
    shipped = {p.name: p.read_bytes() for p in example_dir().iterdir() if p.is_file()}
    assert {"MLproject", "python_env.yaml", "pipeline.yaml", "generate.py", "features.py", "train.py"} <= set(shipped)
    for name, content in shipped.items():
        assert (target / name).read_bytes() == content, name
    assert (target / "luigi.cfg").is_file()
    # The next commands are printed, with the cd and the PYTHONPATH=. that luigi needs to find jets.py.
    assert f"cd {target}" in result.stdout
    assert "PYTHONPATH=. " in result.stdout and "--module jets Train --local-scheduler" in result.stdout
    classes = describe(target, "jets")["classes"]
    assert isinstance(classes, dict)
    assert set(classes) == {"StageDataset", "ExtractFeatures", "Train"}
    assert classes["Train"]["project_dir"] == classes["ExtractFeatures"]["project_dir"] == str(target.resolve())
    assert classes["Train"]["params"]["world_size"] == ["OptionalIntParameter", True]
    assert load_pipeline(target).steps["train"].run_on == "ddp"
    for config in (["--isolated"], ["--config", str(REPO / "pyproject.toml")]):
        lint = run_cmd([str(BIN / "ruff"), "check", "--no-cache", *config, str(target / "jets.py")], cwd=target)
        assert lint.returncode == 0, lint.output


def test_class_names() -> None:
    taken: set[str] = set()
    assert [class_name(n, taken) for n in ("train_model", "train-model", "main", "2fit", "path", "eval.py")] == [
        "TrainModel", "TrainModelStep", "Main", "Step2fit", "PathStep", "Eval"]
