"""Progress on a console that is not a terminal (CI logs, pipes): a few plain lines, never one per update."""

from __future__ import annotations

import logging
from pathlib import Path

import luigi
import pytest

from mltf_flow.clusters.profiles import get_profile
from mltf_flow.clusters.session import _moved, _waiting
from mltf_flow.metric_progress import describe, pick_loss, total_epochs
from mltf_flow.progress import ConsoleStatus, StagingProgress
from mltf_flow.staging.local import stage_local
from mltf_flow.staging.uri import parse_dataset_uri


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mltf_flow.progress"]


def test_many_updates_make_one_line_then_the_final_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mltf_flow")
    with ConsoleStatus(plain_every=3600) as line:
        for i in range(100):
            line.update(f"waiting: {i}")
        line.final()
        line.final("waiting: 99")  # printed once, however often it is the last word
    assert _lines(caplog) == ["waiting: 0", "waiting: 99"]


def test_work_that_ends_at_once_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mltf_flow")
    with ConsoleStatus(quiet_for=3600) as line:
        line.update("staging: 1/4 files")
        assert not line.shown
    assert _lines(caplog) == []


def test_local_staging_reports_files_and_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mltf_flow")
    for i in range(3):
        (tmp_path / f"f{i}.root").write_bytes(b"x" * 1500)
    seen: list[tuple[int, int, int, int]] = []
    stage_local(parse_dataset_uri(str(tmp_path)), progress=lambda *counts: seen.append(counts))
    assert seen[0] == (0, 3, 0, 4500) and seen[-1] == (3, 3, 4500, 4500)
    progress = StagingProgress(luigi.Task(), "file:///data")
    progress._console.quiet_for = 0  # as if it took long: the line is shown, and its outcome
    with progress:
        progress.update(3, 3, 4500, 4500)
    assert _lines(caplog)[0] == "staging file:///data: 3/3 files, 4.5 kB of 4.5 kB checksummed"
    assert _lines(caplog)[-1].startswith("staging file:///data: 3/3 files, 4.5 kB of 4.5 kB checksummed in ")


def test_a_moved_dashboard_is_said_in_our_line() -> None:
    profile = get_profile("slurm-ci")  # dashboard_address 127.0.0.1:8787
    assert _moved(profile, "http://127.0.0.1:42469/status") == " (port 8787 was in use)"
    assert _moved(profile, "http://127.0.0.1:8787/status") == ""
    assert _moved(profile, "") == ""


def test_waiting_for_workers_of_a_profile_without_a_keeper_names_the_count() -> None:
    assert _waiting(get_profile("slurm-ci"), 1, 2) == \
        "waiting for 1 SLURM worker(s) of profile 'slurm-ci' (1 of 2 connected)"


def test_epoch_line() -> None:
    assert pick_loss(["val_accuracy", "val_loss", "train_loss"]) == "train_loss"
    assert pick_loss(["my_Loss_total", "acc"]) == "my_Loss_total"
    assert pick_loss(["data_load_seconds"]) is None
    assert describe("train", 3, 12, "train_loss", 0.4123) == "train: epoch 3/12, train_loss 0.412"
    assert describe("train", 3, None, "loss", 0.5) == "train: epoch 3, loss 0.5"
    assert total_epochs({"epochs": "12"}) == 12 and total_epochs({"epochs": ""}) is None
    assert total_epochs({}) is None
