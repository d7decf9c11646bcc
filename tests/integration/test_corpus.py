"""Issue 12: a corpus of MLflow projects in the shapes found in the wild (tests/integration/corpus/).

Each project runs through ``mltf-flow run`` and through a Python ``MLflowStep`` subclass, twice, and the
second invocation creates no run; both front ends build the same step, so a result of one is a cache hit
for the other; a one-line edit to the project's script runs it again. To keep this fast the cacheable
projects share one sandbox (work dir, sqlite store, and a Dask scheduler the ``local`` profile attaches to)
and one Luigi module whose wrapper task requires every corpus step, so one ``luigi`` invocation covers them
all; the invocations happen once in a module fixture (:func:`corpus`), in phases, and each test reads what
its project did in each phase.

Environments: ``python_env.yaml`` (built with the default env manager, reused, rebuilt when the file
changes; once more with uv), ``conda.yaml`` (built where conda exists, else a one-line error naming
``--env-manager``) and ``docker_env`` (a one-line refusal).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import string
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ATTACH_LOCAL, BIN, REPO, Result, git_project, make_wheel, seed_store, shared_scheduler
from tests.integration.mlflow_queries import client, sqlite_uri

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "corpus"
MODULE = "corpus_steps"
# Settings of the developer's shell that must not reach the commands (each sandbox sets its own).
_SCRUBBED = ("MLTF_FLOW_CONFIG", "MLTF_FLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "MLTF_FLOW_EXPERIMENT",
             "MLTF_INVOCATION_ID", "MLTF_MAIN_PID", "MLTF_FLOW_ENV_MANAGER", "MLTF_FLOW_ENV_ROOT", "PYTHONPATH")
StepCounts = Counter[tuple[str, str]]


class Sandbox:
    """One work dir (sqlite store), one env root, one directory for the Luigi module; the commands run
    as real processes with exactly these settings (module-scoped fixtures run before the per-test
    autouse settings, so nothing is taken from there)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.env_root = root / "envs"
        self.modules = root / "modules"
        self.modules.mkdir(parents=True, exist_ok=True)
        #: A running Dask scheduler the ``local`` profile attaches to (its ``scheduler_address``), or None:
        #: each invocation that runs a step starts a LocalCluster of its own, as by default.
        self.scheduler: str | None = None

    def env(self, env_manager: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        env.update(
            MLTF_FLOW_WORK_DIR=str(self.work),
            MLTF_FLOW_ENV_ROOT=str(self.env_root),
            LUIGI_CONFIG_PATH=str(REPO / "configs" / "luigi.cfg"),
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        )
        if env_manager is not None:  # None: the default env manager, as a user without settings has
            env["MLTF_FLOW_ENV_MANAGER"] = env_manager
        if self.scheduler is not None:
            env[ATTACH_LOCAL] = self.scheduler
        return env

    def run(self, args: list[str], cwd: Path, env_manager: str | None, timeout: float = 300) -> Result:
        env = self.env(env_manager)
        if args[0].endswith("luigi"):
            env["PYTHONPATH"] = str(self.modules)
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise AssertionError(f"{' '.join(args)} did not finish in {timeout:.0f} s:\n{stdout[-3000:]}"
                                 f"{stderr[-3000:]}") from None
        return Result(proc.returncode, stdout, stderr)

    def mltf(self, *args: str, cwd: Path | None = None, env_manager: str | None = "local") -> Result:
        return self.run([str(BIN / "mltf-flow"), *args], cwd or self.root, env_manager)

    def luigi(self, task: str, *args: str, env_manager: str | None = "local") -> Result:
        return self.run([str(BIN / "luigi"), "--module", MODULE, task, *args, "--local-scheduler", "--no-lock"],
                        self.modules, env_manager)

    def write_module(self, source: str) -> None:
        (self.modules / f"{MODULE}.py").write_text(source)

    def step_runs(self) -> StepCounts:
        """Step runs in the store by (experiment, step); pipeline parent runs are not counted."""
        counts: StepCounts = Counter()
        if not (self.work / "mlflow.db").exists():
            return counts
        mlflow = client(sqlite_uri(self.work))
        for exp in mlflow.search_experiments():
            for run in mlflow.search_runs([exp.experiment_id], "tags.`mltf.role` = 'step'", max_results=1000):
                counts[(exp.name, run.data.tags.get("mltf.step", "?"))] += 1
        return counts

    def env_dirs(self) -> set[str]:
        if not self.env_root.is_dir():
            return set()
        return {p.name for p in self.env_root.iterdir() if p.is_dir()}


def one_line_edit(script: Path) -> None:
    """The user's one-line edit: ``SEED = 1`` becomes ``SEED = 2`` (``SEED=1`` in shell scripts)."""
    text = script.read_text()
    edited = text.replace("SEED = 1", "SEED = 2", 1).replace("SEED=1", "SEED=2", 1)
    assert edited != text, f"{script} has no SEED line to edit"
    script.write_text(edited)


def code_files(status: str) -> set[str]:
    """The files listed under ``code (...)`` by ``mltf-flow status --files`` (one indented line each)."""
    lines = status.splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("code (")]
    assert len(starts) == 1, status
    indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
    files = set()
    for line in lines[starts[0] + 1:]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        files.add(line.strip())
    return files


def single_line(result: Result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got {len(lines)} lines:\n{result.output[-3000:]}"
    assert "Traceback" not in result.output
    return lines[0]


# -- the cacheable projects: one case per step -------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    project: str          # below the sandbox's projects dir
    experiment: str       # the MLproject name
    step: str             # entry point (or script) given to --step / -e
    edit: str             # the script that gets the one-line edit
    # -P values of the three CLI invocations ({p} = the project's absolute path); the first runs with
    # cwd = the project and names it ".", as a user in the project directory does.
    spellings: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())


CASES = (
    Case("outputs", "outputs", "corpus_outputs", "main", "train.py", (("epochs=3",),) * 3),
    Case("in_git", "in_git", "corpus_in_git", "main", "fit.py"),
    Case("subdir", "subdir_repo/analysis", "corpus_subdir", "main", "analyse.py", (("k=4",),) * 3),
    Case("shell_main", "shell", "corpus_shell", "main", "run.sh", (("n=4",),) * 3),
    Case("shell_script", "shell", "corpus_shell", "prepare.sh", "prepare.sh"),
    Case("params", "params", "corpus_params", "main", "train.py", (
        ("lr=0.001", "n=10", "data=data/in.txt", "source=file:///srv/corpus/x"),
        ("lr=1e-3", "n=10.0", "data={p}/data/in.txt", "source=file:///srv/corpus/x"),
        ("lr=0.0010", "n=10", "data={p}/data/../data/./in.txt", "source=file:///srv/corpus/x"),
    )),
    Case("no_params", "no_params", "corpus_no_params", "main", "report.py"),
)

# The same steps as a user writes them in Python: one Luigi parameter per entry-point parameter
# (None = the MLproject default), the same values as the CLI's (the path as a file:// URI).
STEPS_MODULE = string.Template('''"""Corpus steps as a user writes them (written by test_corpus.py)."""

import luigi

from mltf_flow.step import MLflowStep


class Outputs(MLflowStep):
    project_dir = "$outputs"
    entry_point = "main"
    epochs = luigi.OptionalIntParameter(default=None)


class InGit(MLflowStep):
    project_dir = "$in_git"
    entry_point = "main"
    alpha = luigi.OptionalFloatParameter(default=None)


class Subdir(MLflowStep):
    project_dir = "$subdir"
    entry_point = "main"
    k = luigi.OptionalIntParameter(default=None)


class ShellMain(MLflowStep):
    project_dir = "$shell_main"
    entry_point = "main"
    n = luigi.OptionalIntParameter(default=None)


class ShellScript(MLflowStep):
    project_dir = "$shell_script"
    entry_point = "prepare.sh"


class Params(MLflowStep):
    project_dir = "$params"
    entry_point = "main"
    lr = luigi.OptionalFloatParameter(default=None)
    n = luigi.OptionalIntParameter(default=None)
    data = luigi.OptionalParameter(default=None)
    source = luigi.OptionalParameter(default=None)


class NoParams(MLflowStep):
    project_dir = "$no_params"
    entry_point = "main"


class Corpus(luigi.WrapperTask):
    def requires(self):
        return [
            Outputs(epochs=3), InGit(), Subdir(k=4), ShellMain(n=4), ShellScript(),
            Params(lr=1e-3, n=10, data="file://$params/data/in.txt", source="file:///srv/corpus/x"),
            NoParams(),
        ]
''')

# (phase, step runs each case's step must add in it)
PHASES = (
    ("mltf-flow run (first)", 1),
    ("mltf-flow run again (other spellings; subdir: after edits outside the project)", 0),
    ("Python subclass after mltf-flow run", 0),
    ("Python subclass after the one-line edit", 1),
    ("Python subclass again", 0),
    ("mltf-flow run after the Python subclass", 0),
)


@dataclass
class Phase:
    name: str
    results: dict[str, Result]
    counts: StepCounts


@dataclass
class CorpusRun:
    sandbox: Sandbox
    projects: dict[str, Path]
    phases: list[Phase] = field(default_factory=list)
    committed_latest: str = ""


def _cli_phase(sandbox: Sandbox, projects: dict[str, Path], which: int) -> dict[str, Result]:
    results = {}
    for case in CASES:
        project = projects[case.id]
        params = [a for value in case.spellings[which] for a in ("-P", value.format(p=project))]
        where = "." if which == 0 else str(project)
        results[case.id] = sandbox.mltf("run", where, "--step", case.step, *params, cwd=project)
    return results


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> CorpusRun:
    sandbox = Sandbox(tmp_path_factory.mktemp("corpus"))
    seed_store(sandbox.work, store_template)  # as the per-test sandboxes' work dirs are (tests/conftest.py)
    base = sandbox.root / "projects"
    base.mkdir()
    for name in ("outputs", "shell", "params", "no_params"):  # outside git
        shutil.copytree(CORPUS / name, base / name)
    git_project(CORPUS / "in_git", base / "in_git")
    git_project(CORPUS / "subdir_repo", base / "subdir_repo")
    projects = {case.id: base / case.project for case in CASES}
    sandbox.write_module(STEPS_MODULE.substitute({k: str(v) for k, v in projects.items()}))
    run = CorpusRun(sandbox, projects, committed_latest=(base / "in_git" / "results" / "latest.yaml").read_text())

    def phase(name: str, results: dict[str, Result]) -> None:
        run.phases.append(Phase(name, results, sandbox.step_runs()))

    def python_phase() -> dict[str, Result]:
        result = sandbox.luigi("Corpus")
        return dict.fromkeys((case.id for case in CASES), result)

    # One Dask scheduler for every invocation of the phases (tests.helpers.shared_scheduler): the projects
    # never use Dask, and a cluster of its own would cost each of the 8 invocations that run steps a
    # LocalCluster start.
    with shared_scheduler() as scheduler:
        sandbox.scheduler = scheduler
        phase(PHASES[0][0], _cli_phase(sandbox, projects, 0))
        # Edits elsewhere in the subdir project's repository: not its code.
        repo = base / "subdir_repo"
        (repo / "README.md").write_text((repo / "README.md").read_text() + "\nMore words.\n")
        helper = repo / "tools" / "helper.py"
        helper.write_text(helper.read_text().replace("return 1", "return 2"))
        (repo / "tools" / "new_tool.py").write_text("print('untracked, outside the project')\n")
        phase(PHASES[1][0], _cli_phase(sandbox, projects, 1))
        phase(PHASES[2][0], python_phase())
        for case in CASES:
            one_line_edit(projects[case.id] / case.edit)
        phase(PHASES[3][0], python_phase())
        phase(PHASES[4][0], python_phase())
        phase(PHASES[5][0], _cli_phase(sandbox, projects, 2))
        sandbox.scheduler = None
    return run


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_cached_across_invocations_and_front_ends(corpus: CorpusRun, case: Case) -> None:
    key = (case.experiment, case.step)
    before: StepCounts = Counter()
    for phase, (name, expected) in zip(corpus.phases, PHASES, strict=True):
        result = phase.results[case.id]
        assert result.returncode == 0, f"{name}: exit code {result.returncode}\n{result.output[-4000:]}"
        made = phase.counts[key] - before[key]
        assert made == expected, (
            f"{name}: {made} new step run(s) of {key}, expected {expected}\n{result.output[-4000:]}"
        )
        before = phase.counts


def test_outputs_in_the_project_dir_are_not_code(corpus: CorpusRun) -> None:
    project = corpus.projects["outputs"]
    written = ["out/model.pkl", "plot.png", "metrics.json", "summary.yaml", "train.log"]
    assert all((project / rel).is_file() for rel in written)
    result = corpus.sandbox.mltf("status", str(project), "--step", "main", "-P", "epochs=3", "--files")
    assert result.returncode == 0, result.output
    assert re.search(r"^main +cached  run ", result.stdout, re.M), result.output
    assert code_files(result.stdout) == {"MLproject", "train.py"}, result.stdout


def test_in_git_outputs_stay_untracked_and_the_tracked_result_was_rewritten(corpus: CorpusRun) -> None:
    project = corpus.projects["in_git"]
    status = subprocess.run(["git", "-C", str(project), "status", "--porcelain"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert " M results/latest.yaml" in status and " M fit.py" in status, status
    assert {"?? out/", "?? metrics.json", "?? summary.yaml", "?? fit.log"} <= set(status), status
    latest = (project / "results" / "latest.yaml").read_text()
    assert latest != corpus.committed_latest and "stamp:" in latest  # the step did rewrite it, every run


def test_subdir_project_repository_was_edited_outside_the_project(corpus: CorpusRun) -> None:
    """The edits that must not rerun the subdir project (phase 2 of its case) really are in the repo."""
    repo = corpus.projects["subdir"].parent
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert {" M README.md", " M tools/helper.py", "?? tools/new_tool.py"} <= set(status), status


def test_param_spellings_reached_the_script_normalised(corpus: CorpusRun) -> None:
    import json

    project = corpus.projects["params"]
    received = json.loads((project / "received.json").read_text())  # written by the last run (the edited one)
    assert received["lr"] == 0.001 and received["n"] == 10 and received["lines"] == 3
    assert received["data"] == str(project / "data" / "in.txt")
    assert received["source"] == "file:///srv/corpus/x"


# -- environments ----------------------------------------------------------------------------------------------
PYENV_MODULE = string.Template('''"""The python_env.yaml corpus project as a Python step (written by test_corpus.py)."""

from mltf_flow.step import MLflowStep


class PyEnv(MLflowStep):
    project_dir = "$project"
    entry_point = "main"
''')


def pyenv_project(root: Path) -> Path:
    """The python_env.yaml project with its placeholders filled, and a wheelhouse with corpusdep 1.0 and 1.1."""
    wheels = root / "wheels"
    for version in ("1.0", "1.1"):
        make_wheel(wheels, "corpusdep", version, f'VERSION = "{version}"\n')
    project = shutil.copytree(CORPUS / "pyenv", root / "projects" / "pyenv")
    spec = project / "python_env.yaml"
    spec.write_text(spec.read_text().replace("@PYTHON@", f"{sys.version_info.major}.{sys.version_info.minor}")
                    .replace("@WHEELHOUSE@", str(wheels)))
    return project


def test_python_env_project_without_its_env_fails(tmp_path: Path) -> None:
    """The corpus script really needs its environment: the test venv lacks corpusdep."""
    project = pyenv_project(tmp_path)
    out = subprocess.run([sys.executable, "use_dep.py"], cwd=project, capture_output=True, text=True)
    assert out.returncode != 0 and "No module named 'corpusdep'" in out.stderr


def test_python_env_is_built_reused_and_rebuilt_when_its_file_changes(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    project = pyenv_project(tmp_path)
    sandbox.write_module(PYENV_MODULE.substitute(project=str(project)))
    key = ("corpus_pyenv", "main")
    version = project / "dep_version.txt"
    seen: list[int] = [0]

    def check(result: Result, what: str, new_runs: int, env_dirs: int) -> None:
        assert result.returncode == 0, f"{what}: exit code {result.returncode}\n{result.output[-4000:]}"
        count = sandbox.step_runs()[key]
        assert count - seen[-1] == new_runs, f"{what}: {count - seen[-1]} new step run(s), expected {new_runs}\n" \
            f"{result.output[-4000:]}"
        seen.append(count)
        assert len(sandbox.env_dirs()) == env_dirs, f"{what}: env dirs {sorted(sandbox.env_dirs())}"

    # The default env manager (no MLTF_FLOW_ENV_MANAGER, no --env-manager) builds it, like `mlflow run`.
    check(sandbox.mltf("run", str(project), "--step", "main", env_manager=None), "first run", 1, 1)
    assert version.read_text().strip() == "1.0"
    first_env = sandbox.env_dirs()
    check(sandbox.mltf("run", str(project), "--step", "main", env_manager=None), "second run", 0, 1)
    check(sandbox.luigi("PyEnv", env_manager=None), "Python subclass after mltf-flow run", 0, 1)
    one_line_edit(project / "use_dep.py")
    check(sandbox.luigi("PyEnv", env_manager=None), "Python subclass after the script edit", 1, 1)
    check(sandbox.luigi("PyEnv", env_manager=None), "Python subclass again", 0, 1)
    assert sandbox.env_dirs() == first_env  # reused, never rebuilt
    spec = project / "python_env.yaml"
    spec.write_text(spec.read_text().replace("corpusdep==1.0", "corpusdep==1.1"))
    check(sandbox.mltf("run", str(project), "--step", "main", env_manager=None), "after editing python_env.yaml",
          1, 2)
    assert version.read_text().strip() == "1.1"
    check(sandbox.luigi("PyEnv", env_manager=None), "Python subclass after the env edit", 0, 2)


def _uv() -> str | None:
    return str(BIN / "uv") if (BIN / "uv").is_file() else shutil.which("uv")


@pytest.mark.skipif(_uv() is None, reason="uv is neither in the venv's bin nor on PATH")
def test_python_env_with_uv(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    project = pyenv_project(tmp_path)
    result = sandbox.mltf("run", str(project), "--step", "main", "--env-manager", "uv", env_manager=None)
    assert result.returncode == 0, result.output[-4000:]
    assert sandbox.step_runs()[("corpus_pyenv", "main")] == 1
    assert (project / "dep_version.txt").read_text().strip() == "1.0"
    assert len(sandbox.env_dirs()) == 1, sorted(sandbox.env_dirs())
    again = sandbox.mltf("run", str(project), "--step", "main", "--env-manager", "uv", env_manager=None)
    assert again.returncode == 0, again.output[-4000:]
    assert sandbox.step_runs()[("corpus_pyenv", "main")] == 1


@pytest.mark.skipif(shutil.which("conda") is None, reason="no conda executable on PATH: the build branch needs one")
def test_conda_project_is_built_with_conda(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    project = shutil.copytree(CORPUS / "conda", tmp_path / "conda")
    result = sandbox.mltf("run", str(project), "--step", "main", env_manager=None)
    assert result.returncode == 0, result.output[-4000:]
    assert sandbox.step_runs()[("corpus_conda", "main")] == 1


@pytest.mark.skipif(shutil.which("conda") is not None, reason="conda exists here: the project is built instead")
def test_conda_project_without_conda_names_env_manager(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    project = shutil.copytree(CORPUS / "conda", tmp_path / "conda")
    result = sandbox.mltf("run", str(project), "--step", "main", env_manager=None)
    assert result.returncode == 2, result.output[-4000:]
    line = single_line(result)
    assert "conda" in line and "--env-manager" in line, line
    assert not sandbox.step_runs()
    python_front_end_refuses(sandbox, project, line.removeprefix("mltf-flow: error: "))
    # What the message suggests works: the project runs in this environment.
    result = sandbox.mltf("run", str(project), "--step", "main", "--env-manager", "local", env_manager=None)
    assert result.returncode == 0, result.output[-4000:]
    assert sandbox.step_runs()[("corpus_conda", "main")] == 1


REFUSED_MODULE = string.Template('''"""A corpus project that cannot run here, as a Python step."""

from mltf_flow.step import MLflowStep


class Refused(MLflowStep):
    project_dir = "$project"
    entry_point = "main"
''')


def python_front_end_refuses(sandbox: Sandbox, project: Path, message: str) -> None:
    """The Python subclass of the same project fails too, with the same message, and runs nothing."""
    sandbox.write_module(REFUSED_MODULE.substitute(project=str(project)))
    result = sandbox.luigi("Refused", env_manager=None)
    assert result.returncode != 0, result.output[-4000:]
    assert message in result.output, result.output[-4000:]
    assert not sandbox.step_runs()


def test_docker_env_project_is_refused_in_one_line(tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    project = shutil.copytree(CORPUS / "docker", tmp_path / "docker")
    for env_manager in (None, "local"):  # the default, and the suite's (a local run is no way round it)
        result = sandbox.mltf("run", str(project), "--step", "main", env_manager=env_manager)
        assert result.returncode == 2, result.output[-4000:]
        line = single_line(result)
        assert "docker_env" in line and "python_env.yaml" in line, line  # what it is, and what to do instead
    assert not sandbox.step_runs()
    python_front_end_refuses(sandbox, project, line.removeprefix("mltf-flow: error: "))
    assert not (project / "fitted.txt").exists()
