"""``mltf-flow init DIR``: a starter for a user's own MLflow project, in any directory.

* DIR holds an ``MLproject``: it is kept as it is; next to it go ``pipeline.yaml`` (every entry point a
  step, for ``mltf-flow run``), a Luigi module ``NAME.py`` (one :class:`~mltf_flow.step.MLflowStep` per
  entry point, one Luigi parameter per MLproject parameter) and a ``luigi.cfg`` whose ``[retcode]`` makes
  failures exit non-zero.
* DIR has no ``MLproject``: the example project shipped in the package (``mltf_flow/examples/jet_tagging``)
  is copied into DIR, with a Luigi module like the repository's ``pipelines`` module.

Nothing is overwritten unless ``force``; a file that already has exactly the content we would write is
left as it is. Luigi's ``--module`` does not import from the current directory when ``luigi`` is a
console script (it only ``__import__``\\s the name), so the printed commands put ``PYTHONPATH=.`` first.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from mltf_flow.errors import ConfigError
from mltf_flow.luigi_defaults import RETCODES
from mltf_flow.mlproject import EntryPoint, Parameter, Project, find_mlproject, read_project

DEFAULT_MODULE = "pipeline_steps"
EXAMPLE = "jet_tagging"
#: Modules a user's step module must not be named after, on top of the standard library and whatever
#: this interpreter can import (checked in :func:`check_module_name`).
_SHADOWED = frozenset({"luigi", "mlflow", "mltf_flow", "dask", "distributed", "torch", "numpy", "pandas", "yaml",
                       "uproot", "awkward", "sklearn", "scipy", "tensorflow", "keras", "jax", "test", "tests",
                       "setup", "conftest"})
#: Luigi task attributes set per instance (not visible on the class).
_INSTANCE_ATTRS = frozenset({"param_kwargs", "param_args", "task_id", "set_tracking_url", "set_status_message",
                             "set_progress_percentage", "world_size"})
_LUIGI_TYPES = {  # MLproject type -> (Luigi parameter with an MLproject default, without one, Python type)
    "int": ("OptionalIntParameter", "IntParameter", "int"),
    "float": ("OptionalFloatParameter", "FloatParameter", "float"),
}
_STRING_TYPES = ("OptionalParameter", "Parameter", "str")


@dataclass
class InitResult:
    """What :func:`init_project` did, for the report printed by the CLI."""

    directory: Path
    module: str
    example: bool
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: Luigi class name -> entry point.
    steps: dict[str, str] = field(default_factory=dict)
    #: The step the printed commands run, and its required parameters (CLI flags).
    target: str = ""
    target_entry_point: str = ""
    required_flags: list[str] = field(default_factory=list)
    required_params: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def example_dir() -> Path:
    """The example MLflow project shipped in the package (works from an installed wheel)."""
    return Path(__file__).resolve().parent / "examples" / EXAMPLE


def check_module_name(name: str, directory: Path) -> None:
    """Refuse module names Luigi could not import or that would shadow other modules."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(f"--module {name!r} is not a Python module name (letters, digits and _, e.g. "
                          f"{DEFAULT_MODULE}).")
    if name in sys.stdlib_module_names or name in _SHADOWED:
        raise ConfigError(f"--module {name!r} would shadow the module {name!r} of Python or a common package; "
                          f"pick another name, e.g. --module {DEFAULT_MODULE}.")
    try:
        spec = find_spec(name)
    except (ImportError, ValueError):
        spec = None
    origin = Path(spec.origin).resolve().parent if spec is not None and spec.origin else None
    if spec is not None and origin != directory:
        where = spec.origin or ", ".join(spec.submodule_search_locations or []) or "this environment"
        raise ConfigError(f"--module {name!r} would shadow the installed module {name!r} ({where}); "
                          f"pick another name, e.g. --module {DEFAULT_MODULE}.")
    if not (directory.is_dir() and find_mlproject(directory)) and (example_dir() / f"{name}.py").is_file():
        raise ConfigError(f"--module {name!r} is a script of the example project; pick another name.")


def class_name(entry_point: str, taken: set[str]) -> str:
    """CamelCase class name of an entry point (``train_model`` -> ``TrainModel``), unique in ``taken``."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", Path(entry_point).stem) if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts) or "Step"
    if not name[0].isalpha():
        name = "Step" + name
    if name in taken or name in ("Path", "MLflowStep", "PROJECT") or keyword.iskeyword(name):
        base, n = name + "Step", 2
        name = base
        while name in taken:
            name, n = f"{base}{n}", n + 1
    taken.add(name)
    return name


def _reserved_names() -> set[str]:
    from mltf_flow.step import MLflowStep

    return set(dir(MLflowStep)) | _INSTANCE_ATTRS


def _usable(name: str, reserved: set[str]) -> bool:
    """Whether an MLproject parameter can be a Luigi parameter of the same name on an MLflowStep."""
    return name.isidentifier() and not keyword.iskeyword(name) and name not in reserved


def _default_text(param: Parameter) -> str:
    text = repr(param.default)
    return text if len(text) <= 40 else text[:37] + "..."


def _param_line(param: Parameter) -> str:
    optional, required, pytype = _LUIGI_TYPES.get(param.type, _STRING_TYPES)
    if param.required:
        head, args = f"{param.name}: {pytype} = luigi.{required}", ""
        description = f"required (MLproject type {param.declared_type})"
    else:
        head, args = f"{param.name}: {pytype} | None = luigi.{optional}", "default=None, "
        description = f"None = the MLproject default, {_default_text(param)}"
    args += f"description={json.dumps(description)}"
    one_line = f"    {head}({args})"
    return one_line if len(one_line) <= 100 else f"    {head}(\n        {args}\n    )"


def _code_entries(module: str) -> tuple[str, str]:
    """The steps' code: the project's (auto), but not this generated module, which describes the pipeline
    like pipeline.yaml does (its edits reach keys through what it declares, not as code)."""
    return ("auto", f"!{module}.py")


def _step_class(cls: str, ep: EntryPoint, reserved: set[str], notes: list[str], module: str) -> str:
    lines = [
        f"class {cls}(MLflowStep):",
        f'    """MLproject entry point {json.dumps(ep.name)}."""',
        "",
        "    project_dir = PROJECT",
        f"    entry_point = {json.dumps(ep.name)}",
        f"    code_paths = {_code_entries(module)!r}  # the project's code, not its outputs; or (\"train.py\",)",
        "    # outputs = {\"model\": \"model:my_model\", \"scores\": \"scores.csv\"}  # checked after exit 0",
        "    # inputs = {\"data\": \"prepare.data\"}  # parameter <- requirement.output (see requires())",
    ]
    params: list[str] = []
    for param in ep.parameters.values():
        if not _usable(param.name, reserved):
            how = ("has no default: give it one in MLproject, or set it with `mltf-flow run . --step "
                   f"{ep.name} -P {param.name}=VALUE`") if param.required else "keeps its MLproject default"
            lines.append(f"    # MLproject parameter {json.dumps(param.name)}: no Luigi parameter (not a free "
                         "Python name here).")
            notes.append(f"{cls}: MLproject parameter {param.name!r} is not a free Python name, so it has no "
                         f"Luigi parameter; it {how}.")
            continue
        params.append(_param_line(param))
    if params:
        lines.append("")
        lines.extend(params)
    return "\n".join(lines) + "\n"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def render_module(project: Project, module: str, result: InitResult) -> str:
    """The Luigi module for a user's project: one MLflowStep per entry point."""
    reserved = _reserved_names()
    taken: set[str] = set()
    classes = []
    for ep in project.entry_points.values():
        cls = class_name(ep.name, taken)
        result.steps[cls] = ep.name
        classes.append(_step_class(cls, ep, reserved, result.notes, module))
    first = next(iter(result.steps))
    header = f'''"""Luigi steps of an MLflow project, written by `mltf-flow init` (edit freely).

Project: {json.dumps(project.name)} (MLproject next to this file).

Each class runs one MLproject entry point as a cached MLflow run (mltf_flow.step.MLflowStep): a second
invocation with the same parameters, code and environment finds the finished run and runs nothing.
Its Luigi parameters are the entry point's parameters; None means "the MLproject default"::

    PYTHONPATH=. luigi --module {module} {first} --local-scheduler

(PYTHONPATH=.: the `luigi` command does not import modules from the current directory by itself.)

To chain steps, the producer declares an output it logs as an artifact and the consumer requires it::

    class Prepare(MLflowStep):
        outputs = {{"data": "data.parquet"}}      # an artifact the run logs (mlflow.log_artifact)

    class Train(MLflowStep):
        inputs = {{"data": "prepare.data"}}       # parameter "data" <- output "data" of requirement "prepare"

        def requires(self) -> dict[str, luigi.Task]:
            return {{"prepare": self.upstream(Prepare)}}

Importing this module stays cheap (no mlflow, dask or torch): Luigi imports it on every invocation.
"""

from __future__ import annotations

from pathlib import Path

import luigi
from mltf_flow.step import MLflowStep

PROJECT = Path(__file__).resolve().parent


'''
    names = ", ".join(json.dumps(c) for c in sorted(result.steps))
    return header + "\n\n".join(classes) + f"\n\n__all__ = [{names}]\n"


def _yaml_key(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z_][\w.-]*", text) else json.dumps(text)


def render_pipeline_yaml(project: Project, module: str = DEFAULT_MODULE) -> str:
    """``pipeline.yaml`` for a user's project: every entry point an independent step."""
    lines = [
        f"# How mltf_flow chains the entry points of {project.name} (written by `mltf-flow init`; edit freely).",
        "#   mltf-flow run . --step STEP -P param=value -P otherstep.param=value",
        "#   mltf-flow status . --step STEP        what is cached, what would run",
        "# Each step runs one MLproject entry point as a cached MLflow run. Besides entry_point, a step may have:",
        "#   inputs:  {param: step} or {param: step.output}   fill a parameter from another step's output;",
        "#            that step then runs first (a stage step gives the path of its dataset manifest)",
        "#   outputs: {name: file.ext} or {name: \"model:NAME\"}  artifacts / logged models the run must have;",
        "#            checked after exit code 0, and what downstream inputs refer to",
        "#   code:    [train.py, lib/]   the files this step's code is (default: auto = the project's code,",
        "#            never its outputs); an edit to them runs the step again, an edit elsewhere does not",
        "#   requires: [step]           run after these steps (ordering only)",
        "#   gpu: true                   use the profile's gpu_profile (mltf-flow profiles lists them)",
        "#   run_on: driver | worker | ddp   driver (default): on this machine, with DASK_SCHEDULER_ADDRESS for",
        "#            fan-out; worker: as one task on a cluster worker; ddp: once per rank on the workers",
        "#            with the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)",
        "# A stage step instead has `dataset: PATH | file://... | rucio://scope:name` (checksummed, recorded).",
        f"name: {_yaml_key(project.name)}",
        "steps:",
    ]
    for ep in project.entry_points.values():
        lines.append(f"  {_yaml_key(ep.name)}:")
        lines.append(f"    entry_point: {_yaml_key(ep.name)}")
        params = ", ".join(ep.parameters) or "none"
        lines.append(f"    # parameters: {params}")
        lines.append("    # inputs: {param: otherstep.output}")
        lines.append("    # outputs: {name: file.ext}")
        lines.append(f"    code: [{', '.join(json.dumps(c) for c in _code_entries(module))}]   # or [script.py, lib/]")
        lines.append("    # run_on: driver")
    return "\n".join(lines) + "\n"


LUIGI_CFG = "\n".join([
    "# Luigi settings for the pipelines of this directory (written by `mltf-flow init`). Luigi reads",
    "# ./luigi.cfg when it runs here (or the file named by $LUIGI_CONFIG_PATH).",
    "",
    "[core]",
    "# Luigi's default (DEBUG) buries the steps' own output.",
    "log_level = INFO",
    "# Without it, importing luigi warns that autoloading range tasks is deprecated (and imports them).",
    "autoload_range = false",
    "",
    "# Luigi exits 0 even when a step failed unless [retcode] says otherwise: every failure is non-zero here.",
    "[retcode]",
    *(f"{name} = {code}" for name, code in RETCODES.items()),
    "",
])

def _example_module(module: str) -> str:
    """The Luigi module for a copy of the example (a template shipped next to it: ``{module}`` is filled)."""
    return (example_dir().parent / "jet_tagging_steps.py.in").read_text().format(module=module)


def _read_own_project(root: Path) -> Project:
    """read_project, with a YAML error said in one line (where, and what the parser expected)."""
    import yaml

    path = find_mlproject(root)
    assert path is not None
    try:
        yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {exc.problem or exc}.") from exc
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {' '.join(str(exc).split())}.") from exc
    return read_project(root)


def _example_files() -> dict[str, Path]:
    src = example_dir()
    if find_mlproject(src) is None:
        raise ConfigError(f"the example project is missing from this installation ({src}); reinstall mltf_flow.")
    return {p.name: p for p in sorted(src.iterdir())
            if p.is_file() and p.name != "__pycache__" and not p.name.endswith((".pyc", ".pyo"))}


def _target_step(project: Project, result: InitResult) -> None:
    by_ep = {ep: cls for cls, ep in result.steps.items()}
    names = list(project.entry_points)
    ep_name = "main" if "main" in by_ep else names[-1]
    result.target, result.target_entry_point = by_ep[ep_name], ep_name
    required = [p.name for p in project.entry_points[ep_name].parameters.values() if p.required]
    reserved = _reserved_names()
    result.required_params = required
    result.required_flags = [_flag(name) for name in required if _usable(name, reserved)]


def init_project(directory: str | os.PathLike[str], module: str = DEFAULT_MODULE, *, force: bool = False) -> InitResult:
    """Write the starter files into ``directory`` (see the module docstring); returns what was done."""
    root = Path(directory).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} is a file; pass a directory (the one with your MLproject, or a new one).")
    root = root.resolve()
    own = root.is_dir() and find_mlproject(root) is not None
    check_module_name(module, root)
    files: dict[str, str | Path] = {}
    if own:
        project = _read_own_project(root)
        if not project.entry_points:
            raise ConfigError(f"{project.mlproject_path}: declares no entry points; add one under entry_points: "
                              "(name: {command: ..., parameters: {...}}).")
        scripts = [ep.name for ep in project.entry_points.values() if re.search(rf"\b{module}\.py\b", ep.command)]
        if scripts:
            raise ConfigError(f"--module {module!r}: {module}.py is the script of entry point {scripts[0]!r}; "
                              f"pick another name, e.g. --module {DEFAULT_MODULE}.")
        result = InitResult(directory=root, module=module, example=False)
        files[f"{module}.py"] = render_module(project, module, result)
        files["pipeline.yaml"] = render_pipeline_yaml(project, module)
        _target_step(project, result)
    else:
        result = InitResult(directory=root, module=module, example=True,
                            steps={"StageDataset": "stage", "ExtractFeatures": "features", "Train": "train"},
                            target="Train", target_entry_point="train")
        files.update(_example_files())
        files[f"{module}.py"] = _example_module(module)
    files["luigi.cfg"] = LUIGI_CFG
    _write(root, files, force, result)
    _ignore_work_dir(root, result)
    return result


def _ignore_work_dir(root: Path, result: InitResult) -> None:
    """Keep the default work dir (sqlite store, artifacts, logs) out of git: a `git add -A` must not commit
    it. A new .gitignore is written; an existing one is only read (it is the user's), and a note says what
    to add."""
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# mltf_flow's work dir: the MLflow store, artifacts and logs of the runs here\n.mltf/\n")
        result.written.append(".gitignore")
    elif not re.search(r"^/?\.mltf/?\s*$", ignore.read_text(), flags=re.M):
        result.notes.append(f"add `.mltf/` to {ignore} (mltf_flow's work dir: the MLflow store of these runs).")


def _content(source: str | Path) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else source.encode()


def _write(root: Path, files: dict[str, str | Path], force: bool, result: InitResult) -> None:
    existing = [name for name, src in files.items()
                if (root / name).exists() and not ((root / name).is_file()
                                                   and (root / name).read_bytes() == _content(src))]
    if existing and not force:
        raise ConfigError(f"{root} already has {', '.join(existing)}; nothing was written. Move them aside, "
                          "init another directory, or pass --force to overwrite them.")
    blocked = [name for name in existing if (root / name).is_dir()]
    if blocked:
        raise ConfigError(f"{root}: {', '.join(blocked)} is a directory; move it aside first.")
    target = root
    try:
        root.mkdir(parents=True, exist_ok=True)
        for name, src in files.items():
            target = root / name
            if target.is_file() and target.read_bytes() == _content(src):
                result.unchanged.append(name)
                continue
            if isinstance(src, Path):
                shutil.copyfile(src, target)
                shutil.copymode(src, target)
            else:
                target.write_text(src)
            result.written.append(name)
    except OSError as exc:
        done = f" (written before it: {', '.join(result.written)})" if result.written else ""
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}{done}.") from exc


def _command(name: str) -> str:
    """``name`` if PATH finds this interpreter's copy of it, else that copy's full path."""
    ours = Path(sys.executable).parent / name
    found = shutil.which(name)
    if not ours.exists() or (found is not None and Path(found).parent == ours.parent):
        return name
    return shlex.quote(str(ours))


def report(result: InitResult, shown_dir: str) -> str:
    """What was written and the commands to paste next."""
    what = "the example project" if result.example else "a pipeline for your MLproject"
    lines = [f"mltf-flow init: {what} in {result.directory}:"]
    described = {"pipeline.yaml": "the steps, for `mltf-flow run`" + ("" if result.example else
                                                                         " (one per entry point)"),
                 f"{result.module}.py": "Luigi module: " + ", ".join(
                     f"{cls} ({ep})" for cls, ep in result.steps.items()),
                 "luigi.cfg": "Luigi settings: [retcode] makes failures exit non-zero"}
    for name in result.written:
        lines.append(f"  wrote     {name:<18} {described.get(name, '')}".rstrip())
    for name in result.unchanged:
        lines.append(f"  unchanged {name}")
    lines.extend(f"  note: {note}" for note in result.notes)
    flags = "".join(f" {flag} VALUE" for flag in result.required_flags)
    lines.append("Next:")
    if Path(shown_dir).expanduser().resolve() != Path.cwd().resolve():
        lines.append(f"  cd {shlex.quote(shown_dir)}")
    if result.example:
        lines.append(f"  {_command('python')} generate.py --out-dir data/jet_sample   # a sample dataset")
    luigi_cmd = _command("luigi")
    lines.append(f"  PYTHONPATH=. {luigi_cmd} --module {result.module} {result.target}{flags} --local-scheduler")
    scoped = "".join(f" -P {shlex.quote(name)}=VALUE" for name in result.required_params)
    lines.append(f"  {_command('mltf-flow')} run . --step {shlex.quote(result.target_entry_point)}{scoped}"
                 "   # the same, from pipeline.yaml")
    lines.append("(PYTHONPATH=. lets luigi import the module from this directory; runs go to ./.mltf,"
                 f" see them with: {_command('mltf-flow')} ui)")
    return "\n".join(lines)


__all__ = ["DEFAULT_MODULE", "InitResult", "check_module_name", "class_name", "example_dir", "init_project",
           "render_module", "render_pipeline_yaml", "report"]
