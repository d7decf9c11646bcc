"""mltf_flow as a physicist gets it: the wheel built from this repository, installed (not editable) into a
fresh venv, used from an empty directory outside the repository with no luigi.cfg and no LUIGI_CONFIG_PATH.

The venv is built once per session: `uv pip install` when `uv` is next to this interpreter, else pip. Both
install `wheel[example]` under constraints.txt (torch is the 2.13.0 CPU wheel, from PIP_FIND_LINKS) and give
the same 131 packages; measured on a 2-core machine: pip 106 s (warm pip cache), uv 11 s cold, 2 s warm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import BIN, REPO, Result
from tests.integration.mlflow_queries import runs, sqlite_uri

pytestmark = pytest.mark.slow

USER_MLPROJECT = """\
name: my_analysis
entry_points:
  main:
    parameters:
      out: string
      n: {type: int, default: 3}
    command: python work.py --out {out} --n {n}
  broken:
    command: python broken.py
"""
WORK_PY = """\
import argparse
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--n", type=int, required=True)
args = parser.parse_args()
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_text("".join(f"event {i}\\n" for i in range(args.n)))
"""
BROKEN_PY = "import sys\nprint('cannot open the input', file=sys.stderr)\nsys.exit(3)\n"


@dataclass
class Venv:
    root: Path
    installer: str
    install_seconds: float

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """A user's shell: this venv first on PATH, nothing of the repository or the test session."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLTF_", "MLFLOW_", "LUIGI_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
        env["PATH"] = os.pathsep.join([str(self.bin), *path])
        env["VIRTUAL_ENV"] = str(self.root)
        env["MLTF_FLOW_ENV_MANAGER"] = "local"  # steps run in this venv's interpreter
        env.update(extra)
        return env

    def run(self, args: list[str], cwd: Path, timeout: float = 300, **extra: str) -> Result:
        proc = subprocess.run(args, cwd=cwd, env=self.env(**extra), capture_output=True, text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def shell(self, line: str, cwd: Path, timeout: float = 300) -> Result:
        """A command line exactly as printed for the user to paste."""
        return self.run(["bash", "-c", line], cwd=cwd, timeout=timeout)


def _source_copy(dest: Path) -> Path:
    """The repository's files (tracked + untracked, not ignored) as a clean tree: no stale build/ in the wheel."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True, text=True).stdout
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, target)
    return dest


def _install(venv: Path, wheel: Path) -> str:
    requirement = f"{wheel}[example]"
    constraints = str(REPO / "constraints.txt")
    uv = BIN / "uv"
    if uv.exists():
        find_links = [a for link in os.environ.get("PIP_FIND_LINKS", "").split() for a in ("--find-links", link)]
        proc = subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                               "-c", constraints, *find_links, requirement], capture_output=True, text=True)
        if proc.returncode == 0:
            return "uv"
        print(f"uv pip install failed, falling back to pip:\n{proc.stderr[-2000:]}")
        subprocess.run([str(venv / "bin" / "python"), "-m", "ensurepip", "-q"], check=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", constraints, requirement],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return "pip"


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    base = tmp_path_factory.mktemp("installed")
    src = _source_copy(base / "src")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"),
                            str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    (wheel,) = (base / "dist").glob("mltf_flow-*.whl")
    root = base / "venv"
    start = time.monotonic()
    without_pip = ["--without-pip"] if (BIN / "uv").exists() else []
    subprocess.run([sys.executable, "-m", "venv", *without_pip, str(root)], check=True)
    installer = _install(root, wheel)
    venv = Venv(root, installer, time.monotonic() - start)
    print(f"\nfresh venv with {wheel.name}[example] via {installer} in {venv.install_seconds:.1f} s")
    yield venv


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    """A user's directory: outside the repository, no luigi.cfg."""
    work = tmp_path / "user"
    work.mkdir()
    assert REPO not in work.resolve().parents
    return work


def test_cli_works_and_installs_no_top_level_pipelines(installed: Venv, empty_dir: Path) -> None:
    version = installed.run(["mltf-flow", "--version"], cwd=empty_dir)
    assert version.returncode == 0 and version.stdout.strip() == "mltf-flow 0.1.0", version.output
    profiles = installed.run(["mltf-flow", "profiles"], cwd=empty_dir)
    assert profiles.returncode == 0, profiles.output
    assert any(line.split()[:1] == ["local"] for line in profiles.stdout.splitlines()), profiles.stdout
    where = installed.run(["python", "-c", "import mltf_flow; print(mltf_flow.__file__)"], cwd=empty_dir)
    assert where.stdout.startswith(str(installed.root)), where.output  # the installed copy, not the repository
    assert installed.run(["python", "-c", "import pipelines"], cwd=empty_dir).returncode != 0

    # A user's own `pipelines` module is the one luigi imports.
    (empty_dir / "pipelines.py").write_text(
        "import luigi\n\n\nclass Hello(luigi.Task):\n"
        "    def output(self):\n        return luigi.LocalTarget('hello.txt')\n\n"
        "    def run(self):\n        with self.output().open('w') as f:\n            f.write('mine')\n"
    )
    result = installed.shell("PYTHONPATH=. luigi --module pipelines Hello --local-scheduler", cwd=empty_dir)
    assert result.returncode == 0, result.output
    assert (empty_dir / "hello.txt").read_text() == "mine"


def _luigi_line(init_stdout: str) -> str:
    (line,) = [line.strip() for line in init_stdout.splitlines() if " --module " in line]
    return line


def test_init_on_a_users_project_runs_caches_and_fails_loudly(installed: Venv, empty_dir: Path,
                                                               tmp_path: Path) -> None:
    (empty_dir / "MLproject").write_text(USER_MLPROJECT)
    (empty_dir / "work.py").write_text(WORK_PY)
    (empty_dir / "broken.py").write_text(BROKEN_PY)
    init = installed.run(["mltf-flow", "init", "."], cwd=empty_dir)
    assert init.returncode == 0, init.output
    line = _luigi_line(init.stdout)
    assert line == "PYTHONPATH=. luigi --module pipeline_steps Main --out VALUE --local-scheduler", init.stdout

    out = tmp_path / "outputs" / "events.txt"  # outside the project: not part of its code
    first = installed.shell(line.replace("VALUE", str(out)), cwd=empty_dir)
    assert first.returncode == 0, first.output
    assert out.read_text().splitlines() == ["event 0", "event 1", "event 2"]
    uri = sqlite_uri(empty_dir / ".mltf")
    step_runs = [r for r in runs(uri, "my_analysis") if r.data.tags.get("mltf.step") == "main"]
    assert len(step_runs) == 1
    assert step_runs[0].info.status == "FINISHED" and step_runs[0].data.tags["mltf.complete"] == "true"
    assert step_runs[0].data.params["n"] == "3"

    count = len(runs(uri, "my_analysis"))
    again = installed.shell(line.replace("VALUE", str(out)), cwd=empty_dir)
    assert again.returncode == 0, again.output
    assert len(runs(uri, "my_analysis")) == count  # cached: nothing ran, no run was created

    # A failing entry point: non-zero with the luigi.cfg `init` wrote ...
    failed = installed.shell("PYTHONPATH=. luigi --module pipeline_steps Broken --local-scheduler", cwd=empty_dir)
    assert failed.returncode == 30, failed.output
    broken = [r for r in runs(uri, "my_analysis") if r.data.tags.get("mltf.step") == "broken"]
    assert [r.info.status for r in broken] == ["FAILED"] and broken[0].data.tags["mltf.exit_code"] == "3"
    # ... and from a directory without any luigi.cfg (mltf_flow applies [retcode] defaults itself).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bare = installed.run(["luigi", "--module", "pipeline_steps", "Broken", "--local-scheduler"], cwd=elsewhere,
                         PYTHONPATH=str(empty_dir), MLTF_FLOW_WORK_DIR=str(empty_dir / ".mltf"))
    assert bare.returncode != 0, bare.output
    assert "cannot open the input" in bare.output


def test_example_pipeline_runs_from_the_shipped_copy(installed: Venv, empty_dir: Path) -> None:
    project = empty_dir / "jets"
    init = installed.run(["mltf-flow", "init", "jets"], cwd=empty_dir)
    assert init.returncode == 0, init.output
    assert f"cd {project}" not in init.stdout and "cd jets" in init.stdout
    sample = installed.run(["python", "generate.py", "--out-dir", "data/jet_sample", "--n-files", "2",
                            "--events-per-file", "800"], cwd=project)
    assert sample.returncode == 0, sample.output
    # The printed command, plus a short training on one rank.
    result = installed.shell(_luigi_line(init.stdout) + " --epochs 1 --world-size 1", cwd=project, timeout=400)
    assert result.returncode == 0, result.output
    uri = sqlite_uri(project / ".mltf")
    done = {r.data.tags.get("mltf.step"): r for r in runs(uri, "jet_tagging") if r.data.tags.get("mltf.step")}
    for step in ("features", "train"):
        assert done[step].info.status == "FINISHED" and done[step].data.tags["mltf.complete"] == "true", step
    assert "val_accuracy" in done["train"].data.metrics
