"""A 1,000-step ``pipeline.yaml`` chain on Luigi's command line and through ``mltf-flow status``: scheduled
and shown whole, without a RecursionError (before, ~300 steps were too deep for both)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_luigi, run_mltf

MLPROJECT = """name: longchain
entry_points:
  fail:
    command: "python fail.py"
  noop:
    command: "python noop.py"
"""


def long_chain(root: Path, n: int) -> Path:
    """``s0000`` (exits 3) <- ``s0001`` <- ... <- ``s{n-1}``, each requiring the one before."""
    root.mkdir()
    (root / "MLproject").write_text(MLPROJECT)
    (root / "fail.py").write_text("raise SystemExit(3)\n")
    (root / "noop.py").write_text("pass\n")
    lines = ["name: longchain", "steps:", "  s0000:", "    entry_point: fail"]
    for k in range(1, n):
        lines += [f"  s{k:04d}:", "    entry_point: noop", f"    requires: [s{k - 1:04d}]"]
    (root / "pipeline.yaml").write_text("\n".join(lines) + "\n")
    return root


def test_luigi_and_status_take_a_1000_step_chain(tmp_path: Path) -> None:
    project = long_chain(tmp_path / "chain", 1000)
    result = run_luigi("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project),
                       "--run-step", "s0999")
    # Every step scheduled; the first one ran and failed, so the other 999 did not run.
    assert result.returncode == 30, result.output[-3000:]  # [retcode] task_failed, not a scheduling error
    assert "RecursionError" not in result.output
    assert "Scheduled 1000 tasks" in result.output, result.output[-3000:]
    assert "step 's0000' failed: its command exited with code 3" in result.output
    status = run_mltf("status", str(project), "--step", "s0999")
    assert status.returncode == 0, status.output[-3000:]
    states = [line.split("  ")[1] for line in status.stdout.splitlines() if line.startswith("s")]
    assert states == ["failed last time"] + ["will run"] * 999, status.stdout[-3000:]
