"""SIGKILL at every named phase of the example pipeline (issue 14, item 8), then a rerun.

One tracking store, one chain of invocations of ``luigi --module pipelines Train`` (local profile, 2 epochs,
one DDP rank): invocation *i* pauses at phase *i* (``MLTF_PAUSE_AT``, :mod:`mltf_flow.phases`: a marker
file, not timing) and its whole process group is SIGKILLed there; invocation *i+1* is the rerun of that
kill and goes on to the next phase; a last invocation runs without pausing. A chain costs one pipeline run
plus a restart per kill, where a fresh pipeline per phase would cost a whole run per phase. One rank, not
the local profile's two: the rank is still a DDP rank launched on a Dask worker (what must die with the
invocation), and a second one only costs every training invocation of the chain another torch process on
this 2-core machine; SIGKILL with two ranks running, on two workers, is
:func:`test_sigkill_while_ranks_run_on_slurm_workers_leaves_no_job`.

After each kill: no complete run lacks its declared outputs, no manifest is half a manifest, and no process
of the invocation is left (its Dask cluster, step commands and DDP ranks die with it). After the reruns:
exit code 0, no run RUNNING (parents and steps), each step complete exactly once, and what was complete at a
kill is what the rerun used (no new run for it); a training killed after a checkpoint continues its run.
Each phase is its own test over what the chain observed there.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mltf_flow import phases
from tests.faults.invocations import (
    TAG_ENV,
    StoreState,
    kill_group,
    manifest_problems,
    orphans_after,
    start,
    store_state,
    wait_for_marker,
)
from tests.helpers import BIN, seed_store, wait_until, worker_jobs
from tests.integration.mlflow_queries import client, sqlite_uri, step_runs

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Kill:
    pause_at: str  # MLTF_PAUSE_AT: PHASE or PHASE:STEP
    #: steps complete at the kill ("stage" = a manifest exists)
    complete: frozenset[str]


_S, _F, _T = "stage", "features", "train"
#: The chain, in the order an invocation passes the phases: each named phase once (a kill costs a restart;
#: phases both steps pass are taken in features, the cheaper one, except the last).
KILLS = [
    Kill(phases.CLUSTER_STARTED, frozenset()),
    Kill(phases.STAGE_CHECKSUMMED, frozenset()),
    Kill(phases.STAGE_DONE, frozenset({_S})),
    Kill(phases.PARENT_CREATED, frozenset({_S})),
    Kill(f"{phases.RUN_CREATED}:features", frozenset({_S})),
    Kill(phases.TENSORFILE_HALF_WRITTEN, frozenset({_S})),
    Kill(f"{phases.COMMAND_EXITED}:features", frozenset({_S})),
    Kill(f"{phases.OUTPUTS_VERIFIED}:features", frozenset({_S})),
    Kill(phases.TENSORFILE_LOADED, frozenset({_S, _F})),
    Kill(phases.CHECKPOINT_SAVED, frozenset({_S, _F})),
    Kill(f"{phases.PARENT_TOLD}:train", frozenset({_S, _F})),
]
#: Every named phase appears in the chain (a new phase in mltf_flow.phases needs a kill here).
assert {k.pause_at.split(":")[0] for k in KILLS} == set(phases.PHASES)


@dataclass
class Observed:
    kill: Kill
    reached_pid: int | None = None
    output: str = ""
    orphans: list[str] = field(default_factory=list)
    state: StoreState = field(default_factory=StoreState)
    manifest_ok: bool = False
    manifest_problems: list[str] = field(default_factory=list)
    manifest_mtime: int | None = None
    #: seconds from the start to the marker, and from the kill to the last process gone
    seconds_to_phase: float = 0.0
    seconds_to_clean: float = 0.0


@dataclass
class Chain:
    work: Path
    uri: str
    kills: dict[str, Observed]
    rerun_code: int
    rerun_output: str
    rerun_orphans: list[str]
    final: StoreState
    manifest_mtime: int | None


def _manifest(work: Path) -> Path | None:
    found = sorted((work / "datasets").glob("*/manifest.json"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, jet_sample: Path, store_template: Path) -> Chain:
    base = tmp_path_factory.mktemp("kills")
    work = seed_store(base / "work", store_template)
    args = [str(BIN / "luigi"), "--module", "pipelines", "Train", "--dataset", str(jet_sample), "--epochs", "2",
            "--world-size", "1", "--local-scheduler", "--no-lock"]
    uri = sqlite_uri(work)
    kills: dict[str, Observed] = {}
    for number, kill in enumerate(KILLS):
        tag = uuid.uuid4().hex
        env = {"MLTF_FLOW_WORK_DIR": str(work), TAG_ENV: tag}
        pause_dir = base / f"pause-{number}"
        invocation = start(args, env, base / f"{number}.log", pause_at=kill.pause_at, pause_dir=pause_dir)
        seen = kills[kill.pause_at] = Observed(kill)
        began = time.monotonic()
        seen.reached_pid = wait_for_marker(invocation, kill.pause_at, pause_dir)
        killed = time.monotonic()
        kill_group(invocation)
        seen.output = invocation.output()
        seen.orphans = orphans_after(tag)
        seen.seconds_to_phase, seen.seconds_to_clean = killed - began, time.monotonic() - killed
        seen.state = store_state(uri)
        manifest = _manifest(work)
        seen.manifest_ok = manifest is not None
        seen.manifest_mtime = manifest.stat().st_mtime_ns if manifest else None
        seen.manifest_problems = manifest_problems(work)
    (base / "timings.txt").write_text("".join(
        f"{o.kill.pause_at}: {o.seconds_to_phase:.1f} s to the phase, {o.seconds_to_clean:.1f} s to clean up, "
        f"orphans {o.orphans}\n" for o in kills.values()))
    tag = uuid.uuid4().hex
    rerun = start(args, {"MLTF_FLOW_WORK_DIR": str(work), TAG_ENV: tag}, base / "rerun.log")
    code = rerun.proc.wait(timeout=600)
    manifest = _manifest(work)
    return Chain(work, uri, kills, code, rerun.output(), orphans_after(tag), store_state(uri),
                 manifest.stat().st_mtime_ns if manifest else None)


@pytest.mark.parametrize("pause_at", [k.pause_at for k in KILLS])
def test_sigkill_at_phase(chain: Chain, pause_at: str) -> None:
    seen = chain.kills[pause_at]
    assert seen.reached_pid, f"the invocation never reached {pause_at}:\n{seen.output}"
    # At the kill: nothing claims to be done that is not, and nothing of the invocation survives it.
    assert seen.orphans == []
    assert seen.state.complete_without_outputs == []
    assert seen.manifest_problems == []
    assert seen.manifest_ok == (_S in seen.kill.complete)
    assert sorted(step for step, ids in seen.state.complete.items() if ids) == sorted(seen.kill.complete - {_S})
    # After the reruns: nothing this kill left RUNNING still is, and what was complete here was reused.
    assert sorted(set(seen.state.running) & set(chain.final.running)) == []
    for step, ids in seen.state.complete.items():
        assert chain.final.complete[step] == ids, step
    if _S in seen.kill.complete:
        assert chain.manifest_mtime == seen.manifest_mtime  # StageDataset did not run again


def test_rerun_after_the_kills_completes_every_step_once(chain: Chain) -> None:
    assert chain.rerun_code == 0, chain.rerun_output
    assert chain.rerun_orphans == []
    assert chain.final.running == []
    assert chain.final.complete_without_outputs == []
    assert {step: len(ids) for step, ids in chain.final.complete.items()} == {"features": 1, "train": 1}
    assert manifest_problems(chain.work) == []


def test_training_killed_after_a_checkpoint_continues_its_run(chain: Chain) -> None:
    """Killed after epoch 0's checkpoint: the rerun reopens that run, and every epoch is logged exactly once."""
    at_checkpoint = chain.kills[phases.CHECKPOINT_SAVED].state
    (train_id,) = chain.final.complete["train"]
    assert f"step train {train_id}" in at_checkpoint.running
    history = client(chain.uri).get_metric_history(train_id, "val_accuracy")
    assert sorted(m.step for m in history) == [0, 1]
    (complete,) = [r for r in step_runs(chain.uri, "train") if r.info.run_id == train_id]
    assert int(complete.data.tags["mltf.attempt"]) >= 2


@pytest.mark.slurm
def test_sigkill_while_ranks_run_on_slurm_workers_leaves_no_job(tmp_path: Path, jet_sample: Path) -> None:
    """Killed while both DDP ranks run in SLURM jobs of the slurm-ci profile: the cluster keeper dies with
    the invocation and cancels every job it submitted; no process of the invocation stays."""
    tag, pause_dir = uuid.uuid4().hex, tmp_path / "pause"
    args = [str(BIN / "luigi"), "--module", "pipelines", "Train", "--profile", "slurm-ci", "--dataset",
            str(jet_sample), "--epochs", "1", "--local-scheduler", "--no-lock"]
    invocation = start(args, {"MLTF_FLOW_WORK_DIR": str(tmp_path / "work"), TAG_ENV: tag}, tmp_path / "run.log",
                       pause_at=phases.TENSORFILE_LOADED, pause_dir=pause_dir)
    try:
        assert wait_for_marker(invocation, phases.TENSORFILE_LOADED, pause_dir), invocation.output()
        jobs = set(worker_jobs())
        assert jobs  # the ranks' SLURM jobs (and the features workers' if still listed)
    finally:
        kill_group(invocation)

    def gone() -> bool:
        return not jobs & set(worker_jobs())

    wait_until(gone, 90, f"SLURM to list none of the invocation's jobs {sorted(jobs)}")
    assert orphans_after(tag) == []
    assert store_state(sqlite_uri(tmp_path / "work")).complete_without_outputs == []
