"""`mltf-flow doctor --profile P` (in-process, through mltf_flow.cli.main) against the real SLURM of
tests/infra/slurm.sh: the partition check and SLURM's own `sbatch --test-only` verdict. The checks that need no
SLURM (a profile that does not resolve) are in tests/unit/clusters/test_cli_profiles.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mltf_flow.cli import main
from tests.helpers import WriteProfiles, isolate_profiles

pytestmark = pytest.mark.slurm

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
nowhere:
  extends: slurm
  partition: nosuch
  cores: 1
  memory: 1GB
"""


@pytest.fixture
def profiles_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_profiles: WriteProfiles) -> Path:
    isolate_profiles(tmp_path, monkeypatch)
    return write_profiles(PROFILES)


def test_doctor_unknown_partition_fails(profiles_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--profile", "nowhere"]) == 1
    out = capsys.readouterr().out
    assert "ok    profile resolves" in out
    assert "FAIL  partition" in out
    assert "'nosuch' not found" in out
    assert "FAIL  sbatch --test-only" in out
    assert "invalid partition" in out
    assert "check(s) failed" in out


def test_doctor_good_profile_passes(profiles_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--profile", "ci-cpu"])
    out = capsys.readouterr().out
    assert "FAIL" not in out, out
    assert code == 0
    assert "ok    partition: debug" in out
    assert "ok    sbatch --test-only" in out
    assert "all checks passed" in out
