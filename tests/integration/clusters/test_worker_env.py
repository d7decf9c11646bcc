"""The workers of a SLURM profile start with mltf_flow's worker environment (mltf_flow.clusters.worker_env):
without Dask's malloc trim threshold, with its BLAS thread limits. (A local profile's: test_no_dashboard.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import REPO_PROFILES, isolate_profiles

pytestmark = pytest.mark.slurm


def test_slurm_workers_start_without_malloc_trim_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mltf_flow.clusters import session
    from mltf_flow.clusters.profiles import get_profile

    def worker_env() -> dict[str, str | None]:  # nested: sent by value (the workers cannot import this module)
        return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}

    isolate_profiles(tmp_path, monkeypatch, REPO_PROFILES)
    session.mark_main_process()
    profile = get_profile("slurm-ci")
    try:
        client = session.client_for(profile)
        session.wait_for_workers(client, profile)
        found = client.run(worker_env)
        assert list(found.values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}] * profile.workers
    finally:
        session.close_all()
