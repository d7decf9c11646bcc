"""MLproject reading, validation and normalisation, checked against MLflow's own loader."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.projects import _project_spec

from mltf_flow.errors import ConfigError, ParameterError
from mltf_flow.mlproject import EntryPoint, Project, command_values, mlflow_command, read_project

REPO = Path(__file__).resolve().parents[2]
JET = REPO / "pipelines" / "jet_tagging"

TOY_MLPROJECT = """\
name: toy
conda_env: conda.yaml
entry_points:
  main:
    parameters:
      alpha: float
      l1_ratio: {type: float, default: 0.1}
      n_iter: {type: int, default: "7"}
      count: {type: integer, default: 3}
      tag: {default: v1}
      plain: {default: 5}
      data: {type: path, default: data.csv}
      src: {type: uri, default: "s3://bucket/key"}
      lr: {type: double, default: 1e-3}
    command: "python train.py --alpha {alpha} --l1 {l1_ratio} --n {n_iter} --tag {tag}"
  other:
    command: python other.py
"""


def write_project(
    root: Path, mlproject: str, *, filename: str = "MLproject", files: tuple[str, ...] = ()
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / filename).write_text(textwrap.dedent(mlproject))
    for name in files:
        (root / name).write_text("# placeholder\n")
    return root.resolve()


def assert_same_as_mlflow(directory: Path) -> Project:
    ours = read_project(directory)
    theirs = _project_spec.load_project(str(directory))
    assert list(ours.entry_points) == list(theirs._entry_points)
    for name, ep in ours.entry_points.items():
        ref = theirs.get_entry_point(name)
        assert ep.command == ref.command, name
        assert list(ep.parameters) == list(ref.parameters), name
        for pname, param in ep.parameters.items():
            ref_param = ref.parameters[pname]
            assert param.declared_type == ref_param.type, (name, pname)
            if ref_param.default is None:
                expected: Any = None
            elif param.type == "path":
                expected = str(ref_param.default)
            else:
                expected = param.normalise(ref_param.default)
            assert param.default == expected, (name, pname)
            assert param.required == (ref_param.default is None), (name, pname)
    if theirs.env_config_path is not None:
        assert ours.env_type == theirs.env_type
        assert ours.env_spec is not None
        assert ours.root / ours.env_spec["file"] == Path(theirs.env_config_path).resolve()
    return ours


def test_jet_tagging_agrees_with_mlflow() -> None:
    project = assert_same_as_mlflow(JET)
    assert set(project.entry_points) == {"generate", "features", "train", "train_fsdp"}
    assert project.entry_points["train"].parameters["lr"].default == 0.003


def test_tmp_project_agrees_with_mlflow(tmp_path: Path) -> None:
    root = write_project(tmp_path / "toy", TOY_MLPROJECT, filename="mlproject", files=("conda.yaml",))
    project = assert_same_as_mlflow(root)
    assert project.mlproject_path == root / "mlproject"
    assert project.env_type == "conda_env"
    params = project.entry_points["main"].parameters
    assert params["alpha"].required and params["alpha"].type == "float"
    assert params["tag"].type == "string" and params["tag"].declared_type == "string"
    assert params["plain"].default == "5"
    assert params["count"].type == "int" and params["count"].declared_type == "integer"
    assert params["n_iter"].default == 7
    assert params["lr"].type == "float"
    assert project.entry_points["other"].parameters == {}


def test_script_entry_point_agrees_with_mlflow(tmp_path: Path) -> None:
    root = write_project(tmp_path / "toy", TOY_MLPROJECT, files=("conda.yaml", "x.py"))
    ours = read_project(root).entry_point("x.py")
    theirs = _project_spec.load_project(str(root)).get_entry_point("x.py")
    assert ours.command == theirs.command == "python x.py"
    assert ours.parameters == {} and theirs.parameters == {}
    assert ours.is_script


def test_directory_without_mlproject_agrees_with_mlflow(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    root.mkdir()
    (root / "run.py").write_text("print('hi')\n")
    project = assert_same_as_mlflow(root.resolve())
    assert project.entry_points == {} and project.mlproject_path is None
    assert project.entry_point("run.py").command == "python run.py"


def test_unknown_type_warns_and_is_a_string_like_mlflow(tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p", "entry_points:\n  main:\n    parameters:\n      flag: {type: bool, default: x}\n"
        "    command: python m.py --flag {flag}\n"
    )
    with pytest.warns(UserWarning, match="flag"):
        project = assert_same_as_mlflow(root)
    assert project.entry_points["main"].parameters["flag"].type == "string"


def test_boolean_default_of_string_param_is_accepted_like_mlflow(tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p",
        "entry_points:\n  main:\n    parameters:\n      verbose: {type: string, default: true}\n"
        "    command: python m.py --verbose {verbose}\n",
    )
    ref = _project_spec.load_project(str(root)).get_entry_point("main")
    assert ref.compute_command({}, None) == "python m.py --verbose True"
    assert read_project(root).entry_points["main"].parameters["verbose"].default == "True"


# -- validation errors ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jet() -> Project:
    return read_project(JET)


def test_unknown_entry_point_lists_entry_points(jet: Project) -> None:
    with pytest.raises(ConfigError) as info:
        jet.entry_point("trian")
    message = str(info.value)
    assert "'trian'" in message
    assert "features, generate, train" in message


def test_unknown_parameter_lists_known_ones(jet: Project) -> None:
    with pytest.raises(ParameterError) as info:
        jet.entry_point("train").normalise({"features": "/x", "epochz": 3})
    message = str(info.value)
    assert "'epochz'" in message
    for known in ("features (path)", "epochs (int)", "lr (float)", "batch_size (int)"):
        assert known in message


def test_unknown_parameter_allowed_when_extra_allowed(jet: Project) -> None:
    values = jet.entry_point("train").normalise({"features": "/x", "extra": 3}, allow_extra=True)
    assert values["extra"] == "3"


def test_missing_required_parameter_is_named(jet: Project) -> None:
    with pytest.raises(ParameterError, match="'features'") as info:
        jet.entry_point("train").normalise({"epochs": 3})
    assert "'train'" in str(info.value)


@pytest.mark.parametrize(
    ("param", "value"),
    [("epochs", "3.5"), ("epochs", 3.5), ("epochs", "ten"), ("epochs", True), ("lr", "abc"), ("lr", "nan"),
     ("lr", "inf"), ("lr", False)],
)
def test_value_not_of_declared_type(jet: Project, param: str, value: Any) -> None:
    with pytest.raises(ParameterError) as info:
        jet.entry_point("train").normalise({"features": "/x", param: value})
    message = str(info.value)
    assert repr(value) in message
    assert f"'{param}'" in message


def test_uri_without_scheme_is_rejected(tmp_path: Path) -> None:
    root = write_project(tmp_path / "toy", TOY_MLPROJECT, files=("conda.yaml",))
    ep = read_project(root).entry_point("main")
    with pytest.raises(ParameterError, match="not a URI"):
        ep.normalise({"alpha": 1, "src": "/data/no/scheme"})
    assert ep.normalise({"alpha": 1, "src": "rucio://user.x:ds"})["src"] == "rucio://user.x:ds"


def test_two_environment_fields_are_rejected_like_mlflow(tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p", "python_env: python_env.yaml\nconda_env: conda.yaml\n"
        "entry_points:\n  main:\n    command: python m.py\n",
        files=("python_env.yaml", "conda.yaml"),
    )
    with pytest.raises(ConfigError) as info:
        read_project(root)
    assert "python_env" in str(info.value) and "conda_env" in str(info.value)
    with pytest.raises(MlflowException):
        _project_spec.load_project(str(root))


# -- normalisation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [100, "100", 100.0, "1e2", "100.0", " 100 ", "1E+2"])
def test_int_forms_normalise_to_one_int(jet: Project, value: Any) -> None:
    got = jet.entry_point("train").parameters["epochs"].normalise(value)
    assert got == 100
    assert type(got) is int


@pytest.mark.parametrize("value", [1e-3, "0.001", "1E-3", 0.001, "1e-3", "0.0010"])
def test_float_forms_normalise_to_one_float(jet: Project, value: Any) -> None:
    got = jet.entry_point("train").parameters["lr"].normalise(value)
    assert type(got) is float
    assert got == 0.001
    assert repr(got) == "0.001"


def test_filled_later_params_are_neither_required_nor_returned(jet: Project) -> None:
    ep = jet.entry_point("train")
    values = ep.normalise({"epochs": "4"}, filled_later=["features"])
    assert "features" not in values
    assert values == {"epochs": 4, "lr": 0.003, "hidden": 32, "batch_size": 256, "seed": 7, "optimizer": "adam",
                      "momentum": 0.9}
    # A value given for a parameter filled later is dropped too (the upstream output wins).
    assert "features" not in ep.normalise({"features": "/x"}, filled_later=["features"])


def test_filled_later_must_name_a_parameter(jet: Project) -> None:
    with pytest.raises(ParameterError, match="'nope'"):
        jet.entry_point("train").normalise({"features": "/x"}, filled_later=["nope"])


def test_path_values_become_absolute(jet: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ep = jet.entry_point("train")
    assert ep.normalise({"features": "f.npz"})["features"] == str(tmp_path.resolve() / "f.npz")
    assert ep.normalise({"features": f"file://{tmp_path}/f.npz"})["features"] == str(tmp_path / "f.npz")
    assert ep.normalise({"features": "runs:/abc/f.npz"})["features"] == "runs:/abc/f.npz"


def test_command_values_render_floats_without_noise() -> None:
    assert command_values({"lr": 0.001, "n": 3, "s": "x"}) == {"lr": "0.001", "n": "3", "s": "x"}


# -- the command MLflow would run ------------------------------------------------------------------------


@pytest.mark.parametrize("lr", ["0.001", 0.001, "1E-3"])
def test_mlflow_command_matches_mlflow(jet: Project, tmp_path: Path, lr: Any) -> None:
    features = tmp_path / "features.npz"
    features.write_bytes(b"x")
    ep = jet.entry_point("train")
    values = ep.normalise({"features": str(features), "lr": lr, "epochs": "3"})
    ours = mlflow_command(jet, "train", values, tmp_path / "storage")
    ref = _project_spec.load_project(str(JET)).get_entry_point("train")
    given = {"features": str(features), "lr": "0.001", "epochs": "3"}
    theirs = ref.compute_command(given, str(tmp_path / "s2"))
    assert ours == theirs
    assert "--lr 0.001 " in ours and "--epochs 3 " in ours and "--hidden 32 " in ours


def test_mlflow_command_rejection_is_a_config_error(jet: Project, tmp_path: Path) -> None:
    values = jet.entry_point("train").normalise({"features": str(tmp_path / "missing.npz")})
    with pytest.raises(ConfigError, match="MLflow rejected entry point 'train'"):
        mlflow_command(jet, "train", values, tmp_path / "storage")


def test_script_entry_point_passes_any_parameter(tmp_path: Path) -> None:
    root = write_project(tmp_path / "toy", TOY_MLPROJECT, files=("conda.yaml", "x.py"))
    ep: EntryPoint = read_project(root).entry_point("x.py")
    assert ep.normalise({"k": 3}) == {"k": "3"}


RENDER_MLPROJECT = """\
name: render
python_env: python_env.yaml
entry_points:
  main:
    parameters:
      data: path
      out: {type: path, default: "out dir"}
      src: {type: uri, default: "s3://bucket/key"}
      note: {type: string, default: "it's"}
      count: {type: int, default: 3}
      rate: {type: float, default: 1e-3}
      odd: {type: Path, default: "x"}
      plain: {default: 5}
    command: "python main.py {data} --out {out} --src {src} --note {note} -n {count} --rate {rate} {odd} {plain}"
  bare:
    command: "echo {{literal}} done"
"""


def _render_cases(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(entry point, values) pairs that a step may pass; paths relative to ``root`` (the cwd)."""
    (root / "in put.csv").write_text("x")
    (root / "out dir").mkdir()
    (root / "per%cent").write_text("x")
    (root / "sub").mkdir()
    full = {"out": "out dir", "src": "s3://bucket/key", "note": "it's", "count": 3, "rate": 0.001, "odd": "x",
            "plain": 5}
    return [
        ("main", {**full, "data": "in put.csv"}),
        ("main", {**full, "data": str(root / "in put.csv")}),
        ("main", {**full, "data": (root / "in put.csv").as_uri()}),
        ("main", {**full, "data": "sub/../in put.csv"}),
        ("main", {**full, "data": "sub/"}),
        ("main", {**full, "data": "per%25cent"}),
        ("main", {**full, "data": "in put.csv", "note": "a b; rm -rf / $(x) `y` \"z\"", "count": -7,
                  "rate": 1e-20, "odd": "~/not-expanded", "plain": ""}),
        ("main", {**full, "data": "in put.csv", "src": "rucio://scope:name", "note": "{braces}"}),
        ("main", {**full, "data": "in put.csv", "extra key": "v w", "--flag": "1", "x": "it's"}),
        ("bare", {}),
        ("bare", {"k": "a b"}),
        ("run.py", {"alpha": 0.5, "name": "x y"}),
        ("run.sh", {"n": 1}),
        ("run.py", {}),
    ]


def test_rendered_command_is_mlflows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our rendering (no mlflow import) gives MLflow's compute_command byte for byte, on many cases."""
    root = write_project(tmp_path / "render", RENDER_MLPROJECT, files=("python_env.yaml", "run.py", "run.sh"))
    monkeypatch.chdir(root)
    project = read_project(root)
    spec = _project_spec.load_project(str(root))
    for i, (name, values) in enumerate(_render_cases(root)):
        ours = mlflow_command(project, name, values, tmp_path / f"s{i}")
        theirs = spec.get_entry_point(name).compute_command(command_values(values), str(tmp_path / f"m{i}"))
        assert ours == theirs, (name, values)


def test_rendering_hands_mlflow_what_only_it_can_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing local path, a non-URI for a uri parameter and a missing required value: MLflow's errors."""
    root = write_project(tmp_path / "render", RENDER_MLPROJECT, files=("python_env.yaml",))
    monkeypatch.chdir(root)
    project = read_project(root)
    full = {"out": "out dir", "src": "s3://b/k", "note": "n", "count": 1, "rate": 0.5, "odd": "x", "plain": 5}
    (root / "out dir").mkdir()
    for values, message in (({**full, "data": "missing.csv"}, "no such file"),
                            ({**full, "data": "out dir", "src": "no-scheme"}, "Expected URI"),
                            ({"out": "out dir"}, "missing parameters")):
        with pytest.raises(ConfigError, match=message):
            mlflow_command(project, "main", values, tmp_path / "s")


def test_rendering_a_step_command_imports_no_mlflow(tmp_path: Path) -> None:
    """The driver reaches a step's start without importing mlflow for its command (issue 16)."""
    features = tmp_path / "features.mltft"
    features.write_bytes(b"x")
    script = (
        "import sys\nfrom pathlib import Path\nfrom mltf_flow.mlproject import read_project, mlflow_command\n"
        f"p = read_project({str(JET)!r})\n"
        f"values = p.entry_point('train').normalise({{'features': {str(features)!r}}})\n"
        f"print(mlflow_command(p, 'train', values, Path({str(tmp_path / 's')!r})))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout.splitlines()
    assert out[0].startswith(f"python train.py --features {features} --epochs 8 ")
    assert out[1] == "[]"
