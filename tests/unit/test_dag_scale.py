"""Large DAGs: a 1,000-step pipeline.yaml chain is built and described without recursion, and what is read
once per invocation (pipeline.yaml, MLproject, settings, code, Luigi's parameter lists) is read again when
it changed or a new invocation starts."""

from __future__ import annotations

import os
from pathlib import Path

import luigi
import pytest

from mltf_flow.cli import main
from mltf_flow.input_check import validate_tree
from mltf_flow.invocation import new_invocation
from mltf_flow.mlproject import read_project
from mltf_flow.pipeline import load_pipeline, make_task
from mltf_flow.step import MLflowStep

MLPROJECT = """name: dagscale
entry_points:
  noop:
    parameters:
      i: {type: int, default: 0}
    command: "python noop.py"
"""


def chain_project(root: Path, n: int) -> Path:
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    (root / "noop.py").write_text("pass\n")
    lines = ["name: chain", "steps:"]
    for k in range(n):
        lines += [f"  s{k:04d}:", "    entry_point: noop"] + ([f"    requires: [s{k - 1:04d}]"] if k else [])
    (root / "pipeline.yaml").write_text("\n".join(lines) + "\n")
    return root


def test_a_1000_step_chain_is_checked_and_described_without_recursion(tmp_path: Path) -> None:
    project = chain_project(tmp_path / "p", 1000)
    last = make_task(str(project), "s0999", {})
    validate_tree(last, set())  # every step's input, the whole tree (as on Luigi's command line)
    first = make_task(str(project), "s0000", {})
    assert isinstance(first, MLflowStep) and isinstance(last, MLflowStep)
    assert first.cache_key() is not None  # nothing ran: the first step has a key, the rest wait for it
    assert last.cache_key() is None
    assert last.describe() is None


def test_status_of_a_1000_step_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = chain_project(tmp_path / "p", 1000)
    assert main(["status", str(project), "--step", "s0999"]) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("s")]  # inputs first; reasons are indented below
    assert len(steps) == 1000 and all("  will run  " in line for line in steps)
    assert steps[0].startswith("s0000") and "known after upstream" not in steps[0]
    assert lines[1].strip() == "because no earlier run" and lines[3].strip() == "because upstream s0000 will rerun"


def _rewrite_keeping_stamp(path: Path, text: str) -> None:
    """Same size and mtime: only a new invocation can tell (what within one invocation is not read again)."""
    st = path.stat()
    assert len(text.encode()) == st.st_size
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_pipeline_yaml_is_read_again_when_edited_or_in_a_new_invocation(tmp_path: Path) -> None:
    project = chain_project(tmp_path / "p", 3)
    assert load_pipeline(project).name == "chain"
    (project / "pipeline.yaml").write_text((project / "pipeline.yaml").read_text().replace("chain", "chain2"))
    assert load_pipeline(project).name == "chain2"  # another size: seen at once
    _rewrite_keeping_stamp(project / "pipeline.yaml",
                           (project / "pipeline.yaml").read_text().replace("chain2", "chain3"))
    assert load_pipeline(project).name == "chain2"  # one invocation reads it once
    new_invocation()
    assert load_pipeline(project).name == "chain3"


def test_mlproject_is_read_again_when_edited_or_in_a_new_invocation(tmp_path: Path) -> None:
    project = chain_project(tmp_path / "p", 1)
    assert read_project(project).name == "dagscale"
    (project / "MLproject").write_text(MLPROJECT.replace("dagscale", "dagscale2"))
    assert read_project(project).name == "dagscale2"
    _rewrite_keeping_stamp(project / "MLproject", MLPROJECT.replace("dagscale", "dagscale3"))
    assert read_project(project).name == "dagscale2"
    new_invocation()
    assert read_project(project).name == "dagscale3"
    (project / "python_env.yaml").write_text("python: '3.11'\n")  # a new file in the directory: read again
    assert read_project(project).env_type == "python_env"


def test_settings_are_resolved_once_per_invocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = chain_project(tmp_path / "p", 1)
    step = make_task(str(project), "s0000", {})
    assert step.settings().work_dir == (tmp_path / "work").resolve()
    monkeypatch.setenv("MLTF_FLOW_WORK_DIR", str(tmp_path / "other"))
    assert make_task(str(project), "s0000", {"i": 1}).settings().work_dir == (tmp_path / "work").resolve()
    new_invocation()
    assert step.settings().work_dir == (tmp_path / "other").resolve()


def test_code_is_hashed_once_per_invocation_and_again_after_a_run(tmp_path: Path) -> None:
    project = chain_project(tmp_path / "p", 1)
    step = make_task(str(project), "s0000", {})
    key = step.cache_key()
    (project / "noop.py").write_text("print('edited')\n")
    other = make_task(str(project), "s0000", {"i": 1})
    assert other.cache_key() != key  # another step, the same code version of this invocation ...
    assert other.describe() is not None and other.describe().code == step.describe().code  # type: ignore[union-attr]
    step.forget_key()  # ... until a run may have changed the project's files
    assert step.cache_key() != key
    new_invocation()
    assert make_task(str(project), "s0000", {}).cache_key() == step.cache_key()


def test_a_parameter_added_to_a_step_class_later_is_seen(tmp_path: Path) -> None:
    class Late(MLflowStep):
        project_dir = str(tmp_path)
        entry_point = "noop"

    before = {name for name, _ in Late.get_params()}
    Late.extra = luigi.Parameter(default="x")  # type: ignore[attr-defined]
    assert {name for name, _ in Late.get_params()} == before | {"extra"}
