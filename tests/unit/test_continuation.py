"""Continuation past the time limit, the parts without SLURM: when a process must stop (a SIGUSR1 that really
arrives; a job end from a real squeue-shaped answer), how many segments a launch takes, what the run is told, and
the margins profiles and backend configs give."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mltf_flow import time_limit
from mltf_flow.continuation import Limits, exhausted, margin_seconds, profile_limits, run_segments, segment_tags
from mltf_flow.launch.base import LaunchResult
from tests.helpers import isolate_profiles


def _result(code: int, timed_out: bool = False) -> LaunchResult:
    return LaunchResult(code, [], Path("step.log"), 1.0, timed_out=timed_out)


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=60)


def test_outside_a_job_the_time_is_never_up(tmp_path: Path) -> None:
    proc = _script(tmp_path, """
        from mltf_flow import time_limit
        print(time_limit.job_end(), time_limit.time_is_up())
        time_limit.stop_if_time_is_up()
        print("went on")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "False", "went", "on"]


def test_sigusr1_makes_the_script_stop_with_exit_code_75(tmp_path: Path) -> None:
    # SLURM's warning, forwarded to the command: the process is not killed by it (USR1's default action) but
    # stops at its next check, with the continuation exit code.
    proc = _script(tmp_path, """
        import atexit, os, signal, sys
        atexit.register(lambda: print("torch imported:", "torch" in sys.modules))
        from mltf_flow import checkpoint
        checkpoint.stop_if_time_is_up()   # installs the handler; nothing due yet
        print("epoch 0 done", flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)
        checkpoint.stop_if_time_is_up()
        print("not reached")
    """)
    assert proc.returncode == time_limit.EXIT_CONTINUE == 75, proc.stderr
    assert "epoch 0 done" in proc.stdout and "not reached" not in proc.stdout
    assert "torch imported: False" in proc.stdout  # a script without torch stops without importing it
    assert "the job's time limit is near" in proc.stdout


def test_the_job_end_comes_from_squeue_and_the_margin_decides(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A squeue on PATH that answers like SLURM's for `-o %e` (local time, no zone): the job ends in 30 s.
    import time
    from datetime import datetime

    end = datetime.fromtimestamp(int(time.time()) + 30).strftime("%Y-%m-%dT%H:%M:%S")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho {end}\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(time_limit, "_end", {})
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert time_limit.job_end() == pytest.approx(time.time() + 30, abs=2)
    monkeypatch.setenv(time_limit.MARGIN_ENV, "10")
    assert not time_limit.time_is_up()
    monkeypatch.setenv(time_limit.MARGIN_ENV, "45")
    assert time_limit.time_is_up()


def test_run_segments_continues_until_the_command_is_done() -> None:
    results = iter([_result(75), _result(75), _result(0)])
    recorded: dict[str, str] = {}
    renewed: list[int] = []
    final = run_segments(lambda: next(results), lambda: renewed.append(1) or ["7", "8"],
                         Limits(5, 15.0, "profile 'p'"), recorded.update, lambda: ["7", "8"])
    assert final.exit_code == 0 and len(renewed) == 2
    assert recorded["mltf.segments"] == "3"
    assert recorded["mltf.segment.1"] == "jobs 7,8: continued: time limit"
    assert recorded["mltf.segment.3"] == "jobs 7,8: finished"


def test_max_restarts_ends_the_launch_with_the_reason() -> None:
    results = iter([_result(75), _result(75), _result(75)])
    recorded: dict[str, str] = {}
    final = run_segments(lambda: next(results), lambda: ["9"], Limits(1, 15.0, "profile 'p'"), recorded.update,
                         lambda: ["9"])
    assert final.exit_code == 75
    assert final.summary is not None and final.summary.startswith("time limit, 2 segments")
    assert "max_restarts=1 (profile 'p')" in final.summary
    assert recorded["mltf.segment.2"] == "job 9: stopped: time limit; no restarts left"


def test_a_reopened_run_counts_on_from_its_earlier_segments() -> None:
    # The first attempt took 2 segments and failed; this attempt's segments are 3 and 4, and max_restarts counts
    # this attempt's continuations only.
    results = iter([_result(75), _result(0)])
    recorded: list[dict[str, str]] = []
    final = run_segments(lambda: next(results), lambda: ["5"], Limits(1, 10.0, ""), lambda t: recorded.append(dict(t)),
                         lambda: ["5"], done=2)
    assert final.exit_code == 0
    assert recorded[0] == {"mltf.segments": "3", "mltf.segment.3": "jobs 5: running"}
    merged = {k: v for tags in recorded for k, v in tags.items()}
    assert merged["mltf.segments"] == "4" and merged["mltf.segment.3"] == "job 5: continued: time limit"
    assert merged["mltf.segment.4"] == "job 5: finished"


def test_a_command_in_the_pipelines_own_process_is_not_continued() -> None:
    calls: list[int] = []

    def launch() -> LaunchResult:
        calls.append(1)
        return _result(75)

    final = run_segments(launch, None, Limits(0, 0.0, ""), lambda tags: None, lambda: ())
    assert len(calls) == 1 and final.exit_code == 75
    assert final.summary is not None and "cannot move to a new job" in final.summary


def test_a_command_stopped_by_its_timeout_is_not_continued() -> None:
    calls: list[int] = []

    def launch() -> LaunchResult:
        calls.append(1)
        return _result(75, timed_out=True)

    run_segments(launch, lambda: ["1"], Limits(3, 1.0, ""), lambda tags: None, lambda: ())
    assert len(calls) == 1


@pytest.mark.parametrize(("limit", "configured", "margin"),
                         [(None, None, 120), (60.0, None, 10), (600.0, None, 60), (7200.0, None, 120),
                          (60.0, 15, 15), (3600.0, 0, 0)])
def test_margin(limit: float | None, configured: int | None, margin: int) -> None:
    assert margin_seconds(limit, configured) == margin


def test_segment_tags_and_message() -> None:
    assert segment_tags(2, ["11"], "finished") == {"mltf.segments": "2", "mltf.segment.2": "job 11: finished"}
    text = exhausted(4, Limits(3, 10.0, "backend config, key 'max_restarts'"))
    assert text.startswith("time limit, 4 segments:") and "running the step again continues" in text


def test_profile_limits_count_the_lifetime_and_read_the_keys(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    from mltf_flow.clusters.profiles import get_profile

    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(textwrap.dedent("""
        short: {kind: slurm, walltime: "00:10:00", pre_timeout_signal: 20, max_restarts: 4}
        aged: {kind: slurm, walltime: "01:00:00", lifetime: 50m, lifetime_stagger: 2m}
        here: {kind: local}
    """))
    isolate_profiles(tmp_path, monkeypatch, profiles)
    short = profile_limits(get_profile("short"))
    assert short is not None and (short.max_restarts, short.margin_s) == (4, 20.0)
    assert "profile 'short'" in short.where
    aged = profile_limits(get_profile("aged"))
    # 2 minutes before the end, plus the 10 minutes a 50-minute lifetime leaves unused, plus the stagger.
    assert aged is not None and (aged.max_restarts, aged.margin_s) == (10, 120.0 + 600.0 + 120.0)
    assert profile_limits(get_profile("here")) is None


def test_a_negative_max_restarts_is_refused_naming_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from mltf_flow.clusters.profiles import get_profile
    from mltf_flow.errors import ConfigError

    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("bad: {kind: slurm, max_restarts: -1}\n")
    isolate_profiles(tmp_path, monkeypatch, profiles)
    with pytest.raises(ConfigError, match="max_restarts"):
        get_profile("bad")


def test_usr1_handler_only_from_the_main_thread() -> None:
    import threading

    before = signal.getsignal(signal.SIGUSR1)
    worker = threading.Thread(target=time_limit.watch)
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGUSR1) is before
