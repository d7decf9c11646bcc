"""One trial of a study: the tuned step with the trial's parameters, run (or found) as a step run.

A trial *is* the step: its key is the step's cache key with the trial's parameters, so

* a complete run with that key (an earlier trial, an earlier study, a plain ``Train`` with the same values) is
  not run again: its value of the metric is the trial's result (``cached``);
* otherwise the key is claimed (:mod:`mltf_flow.claim`: a stale run of it is reaped, a failed one with a
  checkpoint is resumed) and the step's run is created as a child of the study run, then the command runs
  through the step's launcher on the trial's own workers, and is settled like any step
  (:func:`mltf_flow.step_run.settle`): ``mltf.complete=true`` only for exit code 0 and every declared output.

Pruning: while the command runs, the metric it logs per epoch is read from MLflow about every two seconds and
reported to Optuna; when the pruner says so, the command is stopped (every rank) and the run ends KILLED with
``mltf.trial.state=pruned``. The trial's own console says one line when it ends (:mod:`mltf_flow.tune.study`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from mltf_flow import phases
from mltf_flow.claim import Claim, claim
from mltf_flow.clusters import session
from mltf_flow.errors import MltfFlowError
from mltf_flow.launch.base import LaunchRequest, LaunchResult
from mltf_flow.lease import renewer
from mltf_flow.redaction import display_command, strip_credentials
from mltf_flow.run_guard import run_guard
from mltf_flow.step_def import ResolvedStep, Upstream
from mltf_flow.step_lineage import described, record, step_run_name
from mltf_flow.step_run import Cluster, OpenRun, Plan, command_env, make_launcher, replan, run_tags, settle
from mltf_flow.tags import (
    MLFLOW_RUN_NAME,
    TAG_COMMAND_PID,
    TAG_ROLE,
    TAG_STUDY_NAME,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_PRUNED_AT,
    TAG_TRIAL_STATE,
)
from mltf_flow.tune.slots import SlotHold, SlotsClosed, WorkersGone, WorkerSlots

if TYPE_CHECKING:
    import optuna

    from mltf_flow.config import Settings
    from mltf_flow.tracking import Tracker

_log = logging.getLogger(__name__)

#: Seconds between two reads of a running trial's metric history (the pruner's input).
POLL_S = 2.0


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: ``complete`` (with ``value``), ``pruned``, ``failed`` or ``interrupted`` (the driver
    was stopped: Optuna is not told, so the next run of the study retries it)."""

    state: str
    value: float | None = None
    run_id: str | None = None
    cached: bool = False
    error: str = ""
    duration_s: float = 0.0
    #: Per-epoch values of the metric, as reported to the pruner ((step, value)).
    intermediate: tuple[tuple[int, float], ...] = ()


@dataclass
class StudyContext:
    """What every trial of one study run shares (built once by the driver)."""

    base: ResolvedStep
    requirements: Mapping[str, Upstream]
    settings: Settings
    task_id: str
    cluster: Cluster
    tracker: Tracker
    experiment: str
    experiment_id: str
    study_run_id: str
    study_name: str
    metric: str
    #: Complete runs of the tuned step found at the start: key -> (run id, the metric's value or None).
    known: dict[str, tuple[str, float | None]]
    #: The key of every run of the tuned step found at the start (any status).
    seen: set[str] = field(default_factory=set)
    #: Set when the driver is stopped (Ctrl-C, SIGTERM): every running trial stops its command.
    stopping: threading.Event = field(default_factory=threading.Event)
    #: The tuned step's plan: upstream outputs resolved and git asked once per study (every trial: the same code
    #: and inputs), each trial's plan made from it (mltf_flow.step_run.replan).
    base_plan: Plan | None = None


class PruneWatch:
    """``should_stop`` for a trial's launcher: reports the metric's new per-epoch values to Optuna (about every
    :data:`POLL_S` s) and says stop when the pruner prunes the trial or the driver is stopping. Without a
    pruner (``none``) nothing is read while the command runs: its values are reported by the last :meth:`poll`."""

    def __init__(self, context: StudyContext, trial: optuna.Trial, run_id: str) -> None:
        from optuna.pruners import NopPruner

        self.context, self.trial, self.run_id = context, trial, run_id
        self.pruning = not isinstance(trial.study.pruner, NopPruner)
        self.reported: dict[int, float] = {}
        #: The run's value of the metric as MLflow shows it (its latest: highest step, then timestamp).
        self.latest: float | None = None
        self.pruned_at: int | None = None
        self._polled = 0.0

    def poll(self) -> None:
        """Report what the run logged since the last poll."""
        self._polled = time.monotonic()
        history = self.context.tracker.client.get_metric_history(self.run_id, self.context.metric)
        if history:  # MLflow's rule for a run's value of a metric: the highest (step, timestamp, value)
            self.latest = float(max(history, key=lambda m: (m.step, m.timestamp, m.value)).value)
        for metric in sorted(history, key=lambda m: (m.step, m.timestamp)):
            if metric.step not in self.reported:
                self.reported[metric.step] = float(metric.value)
                self.trial.report(float(metric.value), int(metric.step))

    def should_stop(self) -> bool:
        if self.context.stopping.is_set():
            return True
        if self.pruned_at is not None:
            return True
        if not self.pruning or time.monotonic() - self._polled < POLL_S:
            return False
        self.poll()
        if self.reported and self.trial.should_prune():
            self.pruned_at = max(self.reported)
            return True
        return False


def trial_step(base: ResolvedStep, point: Mapping[str, Any]) -> ResolvedStep:
    """The tuned step with a trial's values (already typed: mltf_flow.tune.spec.typed_point)."""
    return dataclasses.replace(base, params={**base.params, **point})


def run_trial(context: StudyContext, trial: optuna.Trial, point: Mapping[str, Any],
              slots: WorkerSlots) -> TrialOutcome:
    """Run (or find) one trial, its command on a slot of ``slots`` (see the module docstring); never raises
    for the trial's own failure: that is a ``failed`` outcome, and the study goes on. Raises
    :class:`~mltf_flow.tune.slots.WorkersGone` when no worker is left to run it."""
    start = time.monotonic()
    step = trial_step(context.base, point)
    key = step.key
    found = context.known.get(key)
    if found is not None:
        run_id, value = found
        if value is None:
            return TrialOutcome("failed", run_id=run_id, cached=True, error=_no_metric(context, run_id))
        return TrialOutcome("complete", value, run_id, cached=True, duration_s=time.monotonic() - start)
    try:
        # On SLURM a trial's run names its own workers' jobs: its slot is taken before the run is created.
        hold = SlotHold(slots, early=bool(context.cluster.job_ids))
    except SlotsClosed:
        return TrialOutcome("interrupted", duration_s=time.monotonic() - start)
    try:
        return _run(context, trial, step, hold, start)
    except WorkersGone:
        raise
    except MltfFlowError as exc:
        return TrialOutcome("failed", run_id=getattr(exc, "run_id", None), error=strip_credentials(str(exc)),
                            duration_s=time.monotonic() - start)
    finally:
        hold.release()


def _run(context: StudyContext, trial: optuna.Trial, step: ResolvedStep, hold: SlotHold,
         start: float) -> TrialOutcome:
    assert context.base_plan is not None  # set by the driver
    planned = replan(context.base_plan, step)
    quiet: Any = SimpleNamespace(set_status_message=None, set_tracking_url=None, set_progress_percentage=None)
    tracker, settings = context.tracker, context.settings
    # A key without any run at the study's start has no failed run to resume: no search for one, unless the
    # claim reaped a run of it or waited for another invocation's (each can leave a checkpoint behind).
    rounds = itertools.count()
    cluster = slot_cluster(context.cluster, hold.slot) if hold.taken else context.cluster
    fresh = step.key not in context.seen  # no run of it at the study's start, none made since by this study
    run = claim(Claim(step.name, step.key, context.experiment, context.experiment_id, settings, fresh), tracker, quiet,
                create=lambda reaped: _create(context, planned, trial.number, reaped, cluster, look_back=bool(reaped)
                                              or next(rounds) > 0 or step.key in context.seen))
    if run is None:  # another invocation ran this very step meanwhile: its run is the result
        return _from_run(context, step.key, time.monotonic() - start)
    phases.reached(phases.RUN_CREATED, step.name)
    watch = PruneWatch(context, trial, run.run_id)
    leases = renewer(settings.tracking_uri, settings.lease_seconds)
    leases.hold(run.run_id)
    try:
        with run_guard(tracker, run.run_id, step=step.name, log_path=run.log_path,
                       failed_tags={TAG_TRIAL_STATE: "failed"}) as guard:  # a launcher's own error too
            try:
                with hold.command() as workers:  # only for the command: the bookkeeping overlaps other commands
                    result = _launch(context, planned, run, watch.should_stop, workers, cluster)
            except SlotsClosed:  # the study stopped while this trial waited for workers
                guard.end(ok=False, exit_code=None, status="KILLED")
                return TrialOutcome("interrupted", run_id=run.run_id, duration_s=time.monotonic() - start)
            _keep_log(context, run, result)
            watch.poll()  # the last epochs' values (the dashboard shows every one) and the run's value
            intermediate = tuple(sorted(watch.reported.items()))
            if watch.pruned_at is not None or context.stopping.is_set():
                # The trial's state goes with the exit code (one request); a stopped driver's trial has none.
                pruned = {TAG_TRIAL_STATE: "pruned", TAG_TRIAL_PRUNED_AT: str(watch.pruned_at)}
                guard.end(ok=False, exit_code=result.exit_code, status="KILLED",
                          tags=pruned if watch.pruned_at is not None else None)
                return TrialOutcome("pruned" if watch.pruned_at is not None else "interrupted", run_id=run.run_id,
                                    duration_s=time.monotonic() - start, intermediate=intermediate)
            try:
                settle(planned, run, result, [], guard, quiet,
                       end_tags=lambda ok: {TAG_TRIAL_STATE: "complete" if ok else "failed"})
            except MltfFlowError as exc:
                return TrialOutcome("failed", run_id=run.run_id, error=strip_credentials(str(exc)),
                                    duration_s=time.monotonic() - start, intermediate=intermediate)
    finally:
        leases.release(run.run_id)
    # The command has exited: the history read after it is the whole of it, so its latest value is the run's.
    value = watch.latest
    context.known[step.key] = (run.run_id, value)
    if value is None:
        return TrialOutcome("failed", run_id=run.run_id, error=_no_metric(context, run.run_id),
                            duration_s=time.monotonic() - start, intermediate=intermediate)
    return TrialOutcome("complete", value, run.run_id, duration_s=time.monotonic() - start, intermediate=intermediate)


def slot_cluster(cluster: Cluster, workers: tuple[str, ...] | None) -> Cluster:
    """The cluster as a trial on ``workers`` sees it: its SLURM jobs (tag ``mltf.slurm_job_ids``, the run's
    description) are its workers' own, not every job of the cluster. A trial run on the driver (no workers)
    keeps the cluster's jobs."""
    if workers is None or not cluster.job_ids:
        return cluster
    try:
        own = session.worker_job_ids(cluster.client, workers)
    except Exception as exc:  # what a run shows is never worth failing a trial: the cluster's jobs, then
        _log.debug(f"could not ask workers {', '.join(workers)} for their SLURM jobs: {exc}")
        return cluster
    return dataclasses.replace(cluster, job_ids=tuple(own)) if own else cluster


def _create(context: StudyContext, planned: Plan, number: int, reaped: list[str], cluster: Cluster, *,
            look_back: bool = True) -> OpenRun:
    """The trial's run under the study run (a failed run of the same key with a checkpoint is resumed)."""
    from mltf_flow.tags import TAG_REPLACES_RUN_IDS

    step, tracker = planned.step, context.tracker
    tags = {**run_tags(planned, cluster, step.key), TAG_ROLE: "trial", TAG_STUDY_NAME: context.study_name,
            TAG_TRIAL_NUMBER: str(number), MLFLOW_RUN_NAME: f"trial {number}: {step_run_name(step)}"}
    if reaped:
        tags[TAG_REPLACES_RUN_IDS] = ",".join(reaped)
    resumable = tracker.resumable_run(context.experiment_id, step.key) if look_back else None
    if resumable is not None:
        run_id = resumable[0]
        tracker.reopen_run(run_id, resumable[1], parent_id=context.study_run_id, tags=tags)
    else:  # its description (it needs the run's id) goes with its parameters: one request
        run_id = tracker.create_step_run(
            context.experiment_id, parent_id=context.study_run_id, run_name=tags[MLFLOW_RUN_NAME], tags=tags,
            params=dict(planned.params),
            more_tags=lambda new: described(planned, cluster, _open(context, planned, new, reopened=False)))
    context.seen.add(step.key)  # a later trial of the same point may resume this run (pruned, failed: checkpoints)
    return _open(context, planned, run_id, reopened=resumable is not None)


def _open(context: StudyContext, planned: Plan, run_id: str, *, reopened: bool) -> OpenRun:
    step = planned.step
    log_path = context.settings.work_dir / "logs" / step.pipeline / f"{step.name}-{run_id}.log"
    # The study run is this trial's parent: it is settled by the study, never by a trial (parent_id "" here).
    return OpenRun(context.tracker, context.experiment_id, run_id, "", log_path, reopened=reopened)


def _launch(context: StudyContext, planned: Plan, run: OpenRun, should_stop: Callable[[], bool],
            workers: tuple[str, ...] | None, cluster: Cluster) -> LaunchResult:
    from mltf_flow.step_run import keep_inputs

    step, settings, tracker = planned.step, context.settings, context.tracker
    keep_inputs(planned, run)
    if run.reopened:  # a new run got its description when it was created (_create)
        record(planned, cluster, run)
    env = command_env(step, settings, run.run_id, run.experiment_id)
    env["DASK_SCHEDULER_ADDRESS"] = cluster.address
    env["MLTF_TUNE_METRIC"] = context.metric
    credentials = session.credentials(cluster.profile)
    if credentials is not None:
        env.update(credentials.client_env())
    env.update(planned.secret_env)
    result: LaunchResult = make_launcher(step, cluster.client).launch(LaunchRequest(
        step=step.name, command=planned.command, cwd=step.project.root, env=env, log_path=run.log_path,
        stderr_tail_lines=settings.stderr_tail_lines,
        on_start=lambda pid: tracker.set_tags(run.run_id, {TAG_COMMAND_PID: str(pid)}),
        on_tags=lambda more: tracker.set_tags(run.run_id, more),
        display_command=display_command(planned.command, planned.params), timeout=step.timeout,
        should_stop=should_stop, workers=workers, echo=False,
    ))
    phases.reached(phases.COMMAND_EXITED, step.name)
    return result


def _keep_log(context: StudyContext, run: OpenRun, result: LaunchResult) -> None:
    """The command's log (and its ranks' logs) go with the run, once its workers are free for the next trial."""
    context.tracker.log_artifact(run.run_id, run.log_path, "mltf", name="step.log")
    for artifact, path in result.extra_logs:
        if Path(path).exists():
            context.tracker.log_artifact(run.run_id, path, "mltf", name=artifact)


def _metric_of(context: StudyContext, run_id: str) -> float | None:
    value = context.tracker.client.get_run(run_id).data.metrics.get(context.metric)
    return None if value is None else float(value)


def _from_run(context: StudyContext, key: str, duration: float) -> TrialOutcome:
    from mltf_flow.run_index import run_index

    ref = run_index(context.settings.tracking_uri).find_complete(context.experiment, key)
    if ref is None:
        return TrialOutcome("failed", error="another invocation ran this trial's step but its run is gone")
    value = _metric_of(context, ref.run_id)
    context.known[key] = (ref.run_id, value)
    if value is None:
        return TrialOutcome("failed", run_id=ref.run_id, cached=True, error=_no_metric(context, ref.run_id))
    return TrialOutcome("complete", value, ref.run_id, cached=True, duration_s=duration)


def _no_metric(context: StudyContext, run_id: str) -> str:
    return (f"MLflow run {run_id} has no metric {context.metric!r}: log it from the entry point "
            f"(mlflow.log_metric({context.metric!r}, value, step=epoch)) or name the metric it logs.")


__all__ = ["POLL_S", "PruneWatch", "StudyContext", "TrialOutcome", "run_trial", "trial_step"]
