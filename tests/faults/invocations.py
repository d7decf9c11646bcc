"""Shared parts of the fault tests: start an invocation that pauses at a named phase (mltf_flow.phases), kill
its whole process group, find the processes an invocation left behind, and judge what the store holds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mltf_flow.phases import PAUSE_AT_ENV, PAUSE_DIR_ENV, marker
from tests.helpers import BIN, REPO
from tests.integration.mlflow_queries import client, runs

#: Set in every invocation a fault test starts; a process whose environment holds it belongs to the test.
TAG_ENV = "MLTF_FAULT_TEST_TAG"
#: The example pipeline's declared outputs (pipelines/__init__.py): artifacts, and the model.
EXAMPLE_ARTIFACTS = {"features": ("features.mltft",), "train": ("metrics.json",)}
EXAMPLE_MODELS = {"train": ("jet_tagger",)}


@dataclass
class Invocation:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def start(args: list[str], env: dict[str, str], log: Path, *, pause_at: str = "",
          pause_dir: Path | None = None) -> Invocation:
    """Start ``args`` in its own process group (so one killpg reaches luigi and what it forked), with the
    phase to pause at."""
    full = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    full.pop(PAUSE_AT_ENV, None)
    if pause_at:
        assert pause_dir is not None
        pause_dir.mkdir(parents=True, exist_ok=True)
        full[PAUSE_AT_ENV] = pause_at
        full[PAUSE_DIR_ENV] = str(pause_dir)
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=full, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Invocation(proc, log)


def wait_for_marker(invocation: Invocation, phase: str, pause_dir: Path, timeout: float = 240) -> int | None:
    """The pid that reached ``phase`` (from its marker), or None if the invocation ended first / timed out."""
    path = marker(phase.split(":")[0], pause_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # polling for an event, not a sleep standing in for one
        if path.exists():
            return int(path.read_text().strip())
        if invocation.proc.poll() is not None:
            return None
        time.sleep(0.1)
    return None


def kill_group(invocation: Invocation) -> None:
    """SIGKILL the invocation's whole process group: nothing of ours gets to clean up in it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(invocation.proc.pid, signal.SIGKILL)
    invocation.proc.wait(timeout=60)


def processes_with(tag: str) -> list[str]:
    """Processes (pid and argv) whose environment holds ``TAG_ENV=tag``."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(f"pid {entry.name}: {argv[:200]}")
    return found


def orphans_after(tag: str, timeout: float = 45) -> list[str]:
    """Processes of the invocation still there ``timeout`` s after it was killed (what dies with its parent
    gets that long: the cluster keeper closes its cluster first)."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with(tag)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@dataclass
class StoreState:
    """What the tracking store holds, reduced to what the invariants need."""

    #: step -> run ids that are FINISHED with mltf.complete=true
    complete: dict[str, list[str]] = field(default_factory=dict)
    #: "role step run_id" of RUNNING runs (parents and steps)
    running: list[str] = field(default_factory=list)
    #: complete runs that lack a declared output
    complete_without_outputs: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)


def store_state(uri: str, experiment: str = "jet_tagging") -> StoreState:
    state = StoreState()
    mlflow = client(uri)
    for run in runs(uri, experiment):
        tags, run_id = run.data.tags, run.info.run_id
        state.statuses[run_id] = run.info.status
        step = tags.get("mltf.step", "")
        if run.info.status == "RUNNING":
            state.running.append(f"{tags.get('mltf.role')} {step} {run_id}")
        if tags.get("mltf.complete") != "true":
            continue
        state.complete.setdefault(step, []).append(run_id)
        if run.info.status != "FINISHED":
            state.complete_without_outputs.append(f"{step} {run_id}: complete but {run.info.status}")
        present = {a.path: a.file_size for a in mlflow.list_artifacts(run_id)}
        for path in EXAMPLE_ARTIFACTS.get(step, ()):
            if not present.get(path):
                state.complete_without_outputs.append(f"{step} {run_id}: no artifact {path}")
        if EXAMPLE_MODELS.get(step):
            models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                 filter_string=f"source_run_id = '{run_id}'")
            for name in EXAMPLE_MODELS[step]:
                if name not in {m.name for m in models}:
                    state.complete_without_outputs.append(f"{step} {run_id}: no model {name}")
    return state


def manifest_problems(work: Path) -> list[str]:
    """A manifest that exists must describe the whole dataset (it is staging's 'complete')."""
    problems = []
    for path in (work / "datasets").glob("*/manifest.json"):
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except ValueError as exc:
            problems.append(f"{path}: not JSON ({exc})")
            continue
        if not data.get("files") or not data.get("digest"):
            problems.append(f"{path}: no files or digest")
    return problems
