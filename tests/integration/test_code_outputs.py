"""An explicit code list that covers a step's own outputs: said at once, and fixed by a "!glob".

The steps here never use Dask: every invocation attaches to one scheduler for the module
(:func:`tests.helpers.shared_scheduler`) instead of starting a LocalCluster each (9 of them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ATTACH_LOCAL, run_cmd, shared_scheduler
from tests.integration.mlflow_queries import sqlite_uri, step_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    with shared_scheduler() as address:
        yield address


@pytest.fixture(autouse=True)
def _attach_local_profile(scheduler: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ATTACH_LOCAL, scheduler)

SCRIPT = 'import pathlib\npathlib.Path("out.yaml").write_text("a: 1\\n")\npathlib.Path("out.txt").write_text("x")\n'


def test_explicit_code_covering_outputs_warns_and_bang_glob_fixes_it(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "MLproject").write_text('name: expl\nentry_points:\n  main:\n    command: "python s.py"\n')
    (project / "s.py").write_text(SCRIPT)
    (project / "pipeline.yaml").write_text("steps:\n  main:\n    entry_point: main\n    code: [.]\n")
    uri = sqlite_uri(tmp_path / "work")

    def run() -> str:
        result = run_cmd(["mltf-flow", "run", str(project), "--step", "main"], cwd=tmp_path)
        assert result.returncode == 0, result.output
        return result.output

    first = run()
    assert "wrote 2 file(s) that its code list ['.'] covers (out.txt, out.yaml)" in first
    run()
    assert len(step_runs(uri, "main", "expl")) == 2  # as warned: every invocation runs it again

    (project / "pipeline.yaml").write_text('steps:\n  main:\n    entry_point: main\n    code: [".", "!out.*"]\n')
    assert "warning" not in run()
    assert "Did not run any tasks" in run()
    assert len(step_runs(uri, "main", "expl")) == 3


PREPARE = """\
import sys
from pathlib import Path

cut = float(sys.argv[1])
Path("results").mkdir(exist_ok=True)
Path("results/events.csv").write_text("".join(f"{x}\\n" for x in range(10) if x >= cut))
"""


def test_reused_run_whose_project_files_another_run_rewrote_runs_again(tmp_path: Path) -> None:
    """Back to the first cut after trying another: the cached run is reused only if results/events.csv is
    still the one it wrote; otherwise the step runs again (the next step would read the other run's file)."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "MLproject").write_text(
        "name: cuts\nentry_points:\n  prepare:\n    parameters: {cut: {type: float, default: 2}}\n"
        "    command: python prepare.py {cut}\n")
    (project / "prepare.py").write_text(PREPARE)
    uri = sqlite_uri(tmp_path / "work")

    def run(cut: str) -> str:
        result = run_cmd(["mltf-flow", "run", str(project), "--step", "prepare", "-P", f"cut={cut}"], cwd=tmp_path)
        assert result.returncode == 0, result.output
        return result.output

    run("2")
    run("5")
    assert (project / "results" / "events.csv").read_text().split() == ["5", "6", "7", "8", "9"]
    again = run("2")  # complete run exists, but results/events.csv is the cut=5 run's
    assert "were since written by another run or changed: running it again" in again
    assert (project / "results" / "events.csv").read_text().split()[0] == "2"
    assert len(step_runs(uri, "prepare", "cuts")) == 3
    assert "Did not run any tasks" in run("2.0")  # now consistent: reused
    (project / "results" / "events.csv").unlink()  # gone: the step makes it again
    assert "running it again" in run("2")
    assert len(step_runs(uri, "prepare", "cuts")) == 4


def test_outputs_written_into_the_project_feed_the_next_step(tmp_path: Path) -> None:
    """A script written for plain `mlflow run` writes results/events.csv; declared as an output, it becomes the
    run's artifact and the next step's path parameter, with no mlflow import in the scripts."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "MLproject").write_text(
        "name: chain\nentry_points:\n  prepare:\n    parameters: {cut: {type: float, default: 2}}\n"
        "    command: python prepare.py {cut}\n"
        "  count:\n    parameters: {events: path}\n    command: python count.py {events}\n")
    (project / "prepare.py").write_text(PREPARE)
    (project / "count.py").write_text(
        "import sys\nfrom pathlib import Path\nprint('events:', len(Path(sys.argv[1]).read_text().split()))\n")
    (project / "pipeline.yaml").write_text(
        "steps:\n  prepare:\n    entry_point: prepare\n    outputs: {events: results/events.csv}\n"
        "  count:\n    entry_point: count\n    inputs: {events: prepare.events}\n")
    uri = sqlite_uri(tmp_path / "work")

    def run(*params: str) -> str:
        args = ["mltf-flow", "run", str(project), "--step", "count", *params]
        result = run_cmd(args, cwd=tmp_path)
        assert result.returncode == 0, result.output
        return result.output

    assert "events: 8" in run()
    (prepare,) = step_runs(uri, "prepare", "chain")
    from tests.integration.mlflow_queries import client

    assert [a.path for a in client(uri).list_artifacts(prepare.info.run_id, "results")] == ["results/events.csv"]
    assert "events: 5" in run("-P", "prepare.cut=5")
    assert "Did not run any tasks" in run("-P", "prepare.cut=5")
