"""Step timeouts and what a step's command leaves behind: a step that runs past its ``timeout`` (its own, else
its profile's) is stopped with every process of its session and fails (exit code 30, run FAILED with the reason
in ``mltf.error``); background children of a command are ended when it exits, whatever its exit code.

The pipeline runs use tests/integration/projects/timeout through ``luigi --module mltf_flow.pipeline``; the
session rules themselves are checked on :func:`mltf_flow.launch.local.run_streaming` with real processes.
Every wait is on an event (a pid file, a line of output, a process gone), never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.helpers import REPO, git_project, run_luigi, seed_store, wait_until
from tests.integration.mlflow_queries import runs, sqlite_uri

PROJECT = Path(__file__).parent / "projects" / "timeout"
#: Every pipeline step runs on this profile: its timeout applies to the steps without one of their own.
PROFILES = {"limited": {"extends": "local", "workers": 2, "timeout": "5s"}}
#: (step, entry-point parameters) run by the one invocation of the ``pipeline`` fixture.
CASES = [("hang", {}), ("hang_profile", {}), ("hang_worker", {}), ("hang_ddp", {}), ("spawn", {"code": 0}),
         ("spawn", {"code": 3})]


@dataclass
class Pipeline:
    """One ``luigi`` invocation running every case (each case's step fails or not on its own)."""

    project: Path
    profiles: Path
    pids: Path
    returncode: int
    output: str
    seconds: float

    def run(self, step: str, **params: Any) -> Any:
        store = sqlite_uri(self.project.parent / "work")
        (found,) = [r for r in runs(store, "timeout") if r.data.tags.get("mltf.role") == "step"
                    and r.data.tags.get("mltf.step") == step
                    and all(r.data.params.get(k) == str(v) for k, v in params.items())]
        return found

    def child_pid(self, run: Any, rank: str = "") -> int:
        """The pid of the background child the run's command (or its rank ``rank``) started (steps.py wrote it)."""
        return int((self.pids / f"{run.info.run_id}{rank}.pid").read_text())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, store_template: Path) -> Iterator[Pipeline]:
    root = tmp_path_factory.mktemp("timeout")
    seed_store(root / "work", store_template)
    project = git_project(PROJECT, root / "timeout")
    profiles = root / "profiles.yaml"
    profiles.write_text(yaml.safe_dump(PROFILES))
    pids = root / "pids"
    pids.mkdir()
    cases = json.dumps([[step, "limited", params] for step, params in CASES])
    with pytest.MonkeyPatch.context() as patch:  # as the autouse _isolated_env does for one test
        for name in ("MLTF_FLOW_CONFIG", "MLTF_FLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "MLTF_INVOCATION_ID",
                     "MLTF_MAIN_PID"):
            patch.delenv(name, raising=False)
        start = time.monotonic()
        result = run_luigi(
            "--module", "tests.integration.timeout_cases", "TimeoutCases", "--project-dir", str(project),
            "--cases", cases,
            env={"MLTF_FLOW_WORK_DIR": str(root / "work"), "MLTF_TEST_PIDS": str(pids),
                 "MLTF_FLOW_PROFILE_FILES": os.pathsep.join([os.environ["MLTF_FLOW_PROFILE_FILES"], str(profiles)]),
                 "LUIGI_CONFIG_PATH": str(REPO / "configs" / "luigi.cfg")},
        )
        yield Pipeline(project, profiles, pids, result.returncode, result.output, time.monotonic() - start)


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for its parent counts as gone: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_timed_out(pipeline: Pipeline, step: str, after: str, source: str, ranks: tuple[str, ...] = ("",)) -> None:
    assert pipeline.returncode == 30, pipeline.output  # [retcode] task_failed, like any failed step
    lines = [x for x in pipeline.output.splitlines() if f"step '{step}' timed out" in x]
    assert lines, pipeline.output
    assert f"timed out after {after} (timeout from {source}" in lines[0], lines[0]
    run = pipeline.run(step)
    assert run.info.status == "FAILED"
    assert "mltf.complete" not in run.data.tags
    assert run.data.tags["mltf.error"].startswith(f"timed out after {after} (timeout from {source}")
    # The command's background child went with it (the command never ended by itself).
    for rank in ranks:
        assert gone(pipeline.child_pid(run, rank))


def test_step_timeout_wins_over_the_profiles(pipeline: Pipeline) -> None:
    assert_timed_out(pipeline, "hang", "1s", f"{pipeline.project / 'pipeline.yaml'}: step 'hang', key 'timeout'")


def test_profile_timeout_applies_to_a_step_without_one(pipeline: Pipeline) -> None:
    assert_timed_out(pipeline, "hang_profile", "5s", f"{pipeline.profiles}: profile 'limited', key 'timeout'")


def test_timeout_on_a_dask_worker(pipeline: Pipeline) -> None:
    assert_timed_out(pipeline, "hang_worker", "1s", f"{pipeline.project / 'pipeline.yaml'}: step 'hang_worker'")


def test_timeout_stops_every_rank_of_a_ddp_step(pipeline: Pipeline) -> None:
    assert_timed_out(pipeline, "hang_ddp", "1s", f"{pipeline.project / 'pipeline.yaml'}: step 'hang_ddp'",
                     ranks=("0", "1"))
    assert "rank 0" in pipeline.output and "rank 1" in pipeline.output  # how each rank ended


@pytest.mark.parametrize(("code", "status"), [(0, "FINISHED"), (3, "FAILED")])
def test_background_child_is_ended_when_the_command_exits(pipeline: Pipeline, code: int, status: str) -> None:
    run = pipeline.run("spawn", code=code)
    assert run.info.status == status, pipeline.output
    assert (run.data.tags.get("mltf.complete") == "true") == (code == 0)
    pid = pipeline.child_pid(run)
    assert f"leaving child {pid} behind, exit code {code}" in pipeline.output
    assert gone(pid)


@pytest.mark.slurm
def test_timeout_on_a_slurm_worker_counts_from_the_commands_start(tmp_path: Path) -> None:
    """The 1 s start only once the command runs in its SLURM job (submitting and starting take longer)."""
    project = git_project(PROJECT, tmp_path / "timeout")
    pids = tmp_path / "pids"
    pids.mkdir()
    result = run_luigi("--module", "mltf_flow.pipeline", "PipelineStep", "--project-dir", str(project), "--run-step",
                       "hang_worker", "--profile", "slurm-ci", env={"MLTF_TEST_PIDS": str(pids)})
    assert result.returncode == 30, result.output
    assert "[hang_worker@worker] READY" in result.output  # it ran before the timeout stopped it
    assert "step 'hang_worker' timed out after 1s" in result.output
    (run,) = [r for r in runs(sqlite_uri(os.environ["MLTF_FLOW_WORK_DIR"]), "timeout")
              if r.data.tags.get("mltf.role") == "step"]
    assert run.info.status == "FAILED" and run.data.tags["mltf.error"].startswith("timed out after 1s")
    assert run.data.tags["mltf.slurm_job_ids"]
    assert gone(int((pids / f"{run.info.run_id}.pid").read_text()))


def test_the_cases_take_little_time(pipeline: Pipeline) -> None:
    # Nothing waits for a child left behind (its pipes): the timeouts (1 + 5 + 1 + 1 s) and the invocation.
    assert pipeline.seconds < 120, pipeline.output


# -- the session rules of run_streaming, on real processes ---------------------------------------------------------


def stream(tmp_path: Path, command: str, **kwargs: Any) -> Any:
    from mltf_flow.launch.local import run_streaming

    return run_streaming(command, cwd=tmp_path, env=dict(os.environ), log_path=tmp_path / "cmd.log", display=command,
                         tail_lines=5, echo_prefix=None, stop_grace=kwargs.pop("stop_grace", 2.0), **kwargs)


def test_children_and_grandchildren_left_in_the_session_are_ended(tmp_path: Path) -> None:
    # `sleep &` and a grandchild under a subshell, one ignoring SIGTERM (SIGKILL after the grace).
    ended = stream(tmp_path, f"sleep 1000 & echo $! > {tmp_path}/a; (trap '' TERM; sleep 1000) & "
                             f"echo $! > {tmp_path}/b; exit 4", stop_grace=0.5)
    assert ended.exit_code == 4 and not ended.timed_out
    assert gone(int((tmp_path / "a").read_text())) and gone(int((tmp_path / "b").read_text()))


def test_timeout_stops_a_command_that_ignores_sigterm(tmp_path: Path) -> None:
    ended = stream(tmp_path, "trap '' TERM; echo started >&2; while :; do sleep 0.1; done", timeout=0.5,
                   stop_grace=0.5)
    assert ended.timed_out and ended.exit_code == -9
    assert ended.tail == ["started"]
    assert "# mltf_flow: timeout: still running after 0.5 s; stopped" in (tmp_path / "cmd.log").read_text()


def test_a_command_that_ends_in_time_is_not_timed_out(tmp_path: Path) -> None:
    ended = stream(tmp_path, "exit 0", timeout=60)
    assert ended.exit_code == 0 and not ended.timed_out


def test_a_process_that_left_the_session_escapes(tmp_path: Path) -> None:
    """The documented limit (docs/pipelines.md): ``setsid`` makes a new session, which is not ours to end."""
    pid_file = tmp_path / "pid"
    # The command exits once the other process is in its new session (it wrote its pid from there).
    ended = stream(tmp_path, f"setsid sh -c 'echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file} && "
                             f"exec sleep 1000' > /dev/null 2>&1 & until [ -e {pid_file} ]; do sleep 0.05; done")
    assert ended.exit_code == 0
    pid = int(pid_file.read_text())
    try:
        escaped = psutil.Process(pid)
        assert escaped.is_running() and escaped.status() != psutil.STATUS_ZOMBIE
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: gone(pid), 10, f"escaped process {pid} to end")
