"""The launcher contract: run one step command to completion and report how it ended."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StepTimeout:
    """How long a step's command may run, and who said so (for the message when it fires)."""

    seconds: float
    #: Where the value came from, e.g. "pipeline.yaml: step 'train', key 'timeout'" or "profile 'gpu' (FILE)".
    source: str


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a launcher needs to run a step's command."""

    step: str
    command: str
    cwd: Path
    env: Mapping[str, str]
    log_path: Path
    stderr_tail_lines: int = 30
    #: The command as written to logs (secret parameter values masked); default: ``command``.
    display_command: str | None = None
    #: Called with the command's pid once it started (recorded on the run for reaping).
    on_start: Callable[[int], None] | None = field(default=None, compare=False)
    #: Called with tags for the step's run while it runs (e.g. where each rank of a DDP job runs).
    on_tags: Callable[[Mapping[str, str]], None] | None = field(default=None, compare=False)
    #: Stop the command (its whole session: every rank of a DDP job) this long after it started; None: never.
    timeout: StepTimeout | None = None
    #: Asked about once a second while the command runs: True stops it (SIGTERM to its session, every rank),
    #: as a pruned trial of a study is stopped (mltf_flow.tune.trial). Not a failure of the launcher.
    should_stop: Callable[[], bool] | None = field(default=None, compare=False)
    #: The Dask workers (addresses) the command may use; None: any of the cluster's. Concurrent trials of a
    #: study each get their own (a DDP trial's ranks are planned over its workers only).
    workers: tuple[str, ...] | None = None
    #: Echo the command's output to our console (prefixed); off for trials, which say one line each.
    echo: bool = True


@dataclass(frozen=True)
class LaunchResult:
    """How the command ended. ``exit_code`` < 0 means killed by that signal."""

    exit_code: int
    stderr_tail: list[str]
    log_path: Path
    duration_s: float
    #: What happened, when one exit code does not say it (e.g. each rank's status in a DDP job).
    summary: str | None = None
    #: More logs to keep with the run: (artifact file name, local path), e.g. the other ranks' logs.
    extra_logs: tuple[tuple[str, Path], ...] = ()
    #: The command was stopped because it ran past the request's timeout.
    timed_out: bool = False
    #: SLURM jobs of workers that disappeared while the command ran on them (a DDP rank "lost"): whether that was
    #: their time limit decides if the command is continued (mltf_flow.continuation).
    lost_jobs: tuple[str, ...] = ()


class Launcher(Protocol):
    """Runs a step command; returns when it has ended. Must not leave the command running when
    interrupted (KeyboardInterrupt / SIGTERM): stop it, then re-raise. Stops it after ``request.timeout``
    (then ``timed_out``), and leaves none of its processes behind when it ends (see
    :func:`mltf_flow.launch.local.run_streaming`)."""

    name: str

    def launch(self, request: LaunchRequest) -> LaunchResult: ...
