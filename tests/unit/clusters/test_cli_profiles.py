"""`mltf-flow profiles`, `render` and `doctor`, run in-process through `mltf_flow.cli.main`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mltf_flow.cli import EXIT_BAD_INPUT, main

WriteCwd = Callable[[object], Path]

PROFILES = """\
ci-cpu:
  extends: slurm
  partition: debug
  cores: 1
  memory: 1GB
  gpu_profile: ci-gpu
ci-gpu:
  extends: ci-cpu
  gpus_per_node: 2
  cores: 2
  gpu_profile: null
broken:
  extends: slurm
  walltime: 10:00:00
nowhere:
  extends: slurm
  partition: nosuch
  cores: 1
  memory: 1GB
"""


@pytest.fixture
def profiles_file(write_profiles: WriteCwd) -> Path:
    return write_profiles(PROFILES)


def lines_by_name(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def test_profiles_lists_every_profile_and_marks_invalid_ones(
    profiles_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profiles"]) == 0
    lines = lines_by_name(capsys.readouterr().out)
    assert {"local", "slurm", "ci-cpu", "ci-gpu", "broken", "nowhere"} <= set(lines)
    assert "INVALID" in lines["broken"]
    assert "Quote it" in lines["broken"]
    for name in ("local", "slurm", "ci-cpu", "ci-gpu", "nowhere"):
        assert "INVALID" not in lines[name], lines[name]
    assert "slurm" in lines["ci-cpu"].split()[1]
    assert "-> GPU steps: ci-gpu" in lines["ci-cpu"]
    assert "2 GPU/job" in lines["ci-gpu"]
    assert str(profiles_file.resolve()) in lines["ci-cpu"]
    assert "local" in lines["local"].split()[1]


def test_profiles_with_a_bad_env_override_is_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLTF_FLOW_SET__GHOST__PARTITION", "x")
    assert main(["profiles"]) == EXIT_BAD_INPUT
    assert "MLTF_FLOW_SET__GHOST__PARTITION" in capsys.readouterr().err


def test_render_local_profile_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--profile", "local"]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "mltf-flow: error:" in captured.err
    assert "'local' is a local profile: it has no job script" in captured.err


def test_render_unknown_profile_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--profile", "nope"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no profile 'nope'" in err
    assert "local" in err


def test_render_invalid_profile_is_bad_input(profiles_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--profile", "broken"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert str(profiles_file.resolve()) in err
    assert "walltime" in err


def test_render_slurm_profile_prints_the_script(
    tmp_path: Path, profiles_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "--profile", "ci-gpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/usr/bin/env bash\n")
    lines = out.splitlines()
    assert "#SBATCH -p debug" in lines
    assert "#SBATCH --gres=gpu:2" in lines
    logs = (tmp_path / "work").resolve() / "slurm-logs" / "ci-gpu"
    assert f"#SBATCH -o {logs}/mltf-worker-%J.out" in lines
    assert "--nworkers 2" in out


def test_render_profile_whose_interface_is_not_on_this_host(
    write_profiles: WriteCwd, capsys: pytest.CaptureFixture[str]
) -> None:
    # The interface is the compute nodes' (workers bind to it there): rendering on a login node without it
    # must still print the script.
    write_profiles({"ib": {"extends": "slurm", "partition": "debug", "interface": "nosuch0"}})
    code = main(["render", "--profile", "ib"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "--interface nosuch0" in captured.out


def test_doctor_invalid_profile_fails_without_slurm(profiles_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--profile", "broken"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  profile resolves" in out
    assert "Quote it" in out
