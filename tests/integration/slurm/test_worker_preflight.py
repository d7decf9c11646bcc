"""``sbatch --test-only`` pre-flight of the Dask worker job script of a SLURM profile
(mltf_flow.clusters.slurm.preflight) against the real SLURM of tests/infra/slurm.sh (one node, 4 GPUs,
partition ``debug``): SLURM's own rejection reaches the user with the profile's name, file and the command to
inspect the script. The pre-flight without sbatch on PATH is in tests/unit/clusters/test_slurm_script.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mltf_flow.clusters.profiles import Profile, get_profile
from mltf_flow.clusters.slurm import preflight, render_job_script
from mltf_flow.errors import ConfigError, SlurmRejected
from tests.helpers import WriteProfiles, isolate_profiles

pytestmark = pytest.mark.slurm


@pytest.fixture(autouse=True)
def _profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_profiles(tmp_path, monkeypatch)


def profile_from(write: WriteProfiles, name: str, settings: dict[str, object]) -> Profile:
    write({name: settings})
    return get_profile(name)


def test_preflight_rejects_more_gpus_than_any_node(tmp_path: Path, write_profiles: WriteProfiles) -> None:
    path = write_profiles(
        {"too-big": {"extends": "slurm", "partition": "debug", "cores": 8, "gpus_per_node": 8, "memory": "1GB"}}
    )
    profile = get_profile("too-big")
    script = render_job_script(profile, tmp_path / "logs")
    assert "#SBATCH --gres=gpu:8" in script.splitlines()
    with pytest.raises(SlurmRejected) as info:
        preflight(profile, script)
    message = str(info.value)
    assert "Requested node configuration is not available" in message
    assert "'too-big'" in message
    assert str(path.resolve()) in message
    assert "mltf-flow render --profile too-big" in message


def test_preflight_rejects_unknown_partition(tmp_path: Path, write_profiles: WriteProfiles) -> None:
    profile = profile_from(write_profiles, "nowhere", {"extends": "slurm", "partition": "nosuch"})
    with pytest.raises(SlurmRejected, match="invalid partition") as info:
        preflight(profile, render_job_script(profile, tmp_path / "logs"))
    assert "'nowhere'" in str(info.value)
    assert isinstance(info.value, ConfigError)  # bad settings: the CLI reports it as bad input


def test_preflight_accepts_a_fitting_job(tmp_path: Path, write_profiles: WriteProfiles) -> None:
    profile = profile_from(
        write_profiles, "fits", {"extends": "slurm", "partition": "debug", "cores": 1, "memory": "1GB"}
    )
    answer = preflight(profile, render_job_script(profile, tmp_path / "logs"))
    assert "to start at" in answer
