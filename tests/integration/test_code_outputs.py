"""An explicit code list that covers a step's own outputs: said at once, and fixed by a "!glob"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cmd
from tests.integration.mlflow_queries import sqlite_uri, step_runs

pytestmark = pytest.mark.slow

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
