"""The one pre-flight check (mltf_flow.slurm.preflight) with a stand-in ``sbatch`` on PATH: the verdict, SLURM's
answer inside the caller's words, the script passed as a file that is gone afterwards. The real SLURM's verdicts
are in tests/integration/slurm/test_job_preflight.py and test_worker_preflight.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mltf_flow.errors import ConfigError, SlurmRejected
from mltf_flow.slurm.preflight import check, would_accept

SCRIPT = "#!/usr/bin/env bash\n#SBATCH --partition=debug\necho hi\n"


def stand_in_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, code: int, answer: str) -> None:
    """An ``sbatch`` that records its arguments and the script's text (``seen.args``, ``seen.script``), then
    answers like SLURM on stderr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "seen"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\necho "$@" > {seen}.args\ncat "$2" > {seen}.script\n'
                      f"echo '{answer}' >&2\nexit {code}\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_accepted_script_returns_slurms_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in_sbatch(tmp_path, monkeypatch, code=0,
                    answer="sbatch: Job 12 to start at 2030-01-01T00:00:00 using 1 processors on nodes c1")
    answer = check(SCRIPT, lambda a: f"never: {a}")
    assert answer.startswith("sbatch: Job 12 to start")
    args = (tmp_path / "seen.args").read_text().split()
    assert args[0] == "--test-only"
    assert (tmp_path / "seen.script").read_text() == SCRIPT
    assert not Path(args[1]).exists()  # the temporary script is removed


def test_rejected_script_raises_with_the_callers_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in_sbatch(tmp_path, monkeypatch, code=1,
                    answer="sbatch: error: invalid partition specified: nosuch")
    assert would_accept(SCRIPT) == (False, "sbatch: error: invalid partition specified: nosuch")
    with pytest.raises(SlurmRejected) as info:
        check(SCRIPT, lambda a: f"the job asked for partition nosuch:\n    {a}")
    assert str(info.value) == ("the job asked for partition nosuch:\n"
                               "    sbatch: error: invalid partition specified: nosuch")


def test_without_sbatch_the_hint_completes_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ConfigError, match=r"`sbatch` is not on PATH.*; use a local profile") as info:
        check(SCRIPT, lambda a: a, hint="use a local profile")
    assert not isinstance(info.value, SlurmRejected)
