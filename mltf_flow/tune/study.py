"""Running a study: one step whose trials fan out as launches on the profile's workers (never Luigi tasks).

DESIGN.md principle 3: Luigi scheduling is quadratic in DAG size, so a study is *one* Luigi task. Its run:

1. **claim** the study's key like any step (:mod:`mltf_flow.claim`): one driver per study; the study run is a
   step run (``mltf.role=study``) under the invocation's parent run. A study run a killed driver left behind is
   reaped and *reopened*, so every trial of the study stays under one study run;
2. **open** the Optuna study in its RDB storage (:func:`mltf_flow.tune.spec.storage_url`) by name: trials a dead
   driver left RUNNING are failed (marked ``mltf_retried``, not counted) and their parameters enqueued again; the
   entry point's defaults are trial 0 of a new study (the baseline);
3. **fan out**: ``n_jobs`` slots of workers (the profile's workers / the trial's world size), each trial's
   command on one (:mod:`mltf_flow.tune.slots`, :mod:`mltf_flow.tune.trial`), two more trials in flight so that
   trials' bookkeeping overlaps other trials' commands; ask and tell happen in this thread; a failed trial is told
   FAIL and the study goes on, until ``n_trials`` trials ended (complete, pruned or failed);
4. **settle**: the best trial's value, parameters and run are tagged on the study run, every trial's outcome is
   logged (``mltf/trials.json``; the metric per trial number), and the run completes when at least one trial did.

Ctrl-C or SIGTERM stops every running trial (their runs end KILLED, Optuna is not told: the next run of the same
command retries them), then ends the study run KILLED.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from mltf_flow import phases
from mltf_flow.claim import Claim, claim
from mltf_flow.errors import ConfigError, StepError
from mltf_flow.file_lock import file_lock
from mltf_flow.invocation import invocation_id
from mltf_flow.lease import renewer
from mltf_flow.lineage_view import describe_parent
from mltf_flow.progress import report_status
from mltf_flow.redaction import is_secret_param
from mltf_flow.run_guard import run_guard
from mltf_flow.run_index import RunRef, run_index
from mltf_flow.step_lineage import git_of
from mltf_flow.step_run import Cluster, OpenRun, Plan, connect, plan, run_tags
from mltf_flow.tags import (
    MLFLOW_RUN_NAME,
    TAG_CACHE_KEY,
    TAG_COMPLETE,
    TAG_ROLE,
    TAG_STEP,
    TAG_STUDY_BEST_PARAMS,
    TAG_STUDY_BEST_RUN_ID,
    TAG_STUDY_BEST_TRIAL,
    TAG_STUDY_BEST_VALUE,
    TAG_STUDY_DASHBOARD,
    TAG_STUDY_DIRECTION,
    TAG_STUDY_METRIC,
    TAG_STUDY_N_TRIALS,
    TAG_STUDY_NAME,
    TAG_STUDY_STORAGE,
    TAG_STUDY_TRIALS,
)
from mltf_flow.tracking import Tracker
from mltf_flow.tune.slots import SPARE_TRIALS, Slot, WorkerSlots, worker_groups
from mltf_flow.tune.spec import StudySpec, make_pruner, make_sampler, shown_storage, storage_url, typed_point
from mltf_flow.tune.trial import StudyContext, TrialOutcome, run_trial

if TYPE_CHECKING:
    import luigi
    import optuna

    from mltf_flow.config import Settings
    from mltf_flow.step_def import ResolvedStep, Upstream

_log = logging.getLogger(__name__)

#: Study user attributes: what ``--from-study`` and a resumed driver read back from the storage.
ATTR_IDENTITY = "mltf.identity"
ATTR_FIXED = "mltf.fixed_params"
ATTR_WORLD_SIZE = "mltf.world_size"
ATTR_STEP = "mltf.step"
ATTR_PIPELINE = "mltf.pipeline"
#: Trial system attribute: a trial a dead driver left RUNNING, failed and run again (not counted).
ATTR_RETRIED = "mltf_retried"


def run_study(base: ResolvedStep, spec: StudySpec, requirements: Mapping[str, Upstream], *, settings: Settings,
              task_id: str, reporter: luigi.Task) -> None:
    """Run the study of ``base`` (the tuned step with its fixed parameters); see the module docstring."""
    cluster = connect(base.profile, reporter)
    tracker = Tracker(settings)
    experiment = settings.experiment_for(base.pipeline)
    experiment_id = tracker.ensure_experiment(experiment)
    planned = dataclasses.replace(plan(base, requirements, settings, task_id), git=git_of(base))
    key, name = spec.key(base), spec.study_name(base)
    run = claim(Claim(f"{base.name} (study {name})", key, experiment, experiment_id, settings), tracker, reporter,
                create=lambda reaped: _open_study_run(planned, spec, cluster, tracker, experiment_id, reaped))
    if run is None:  # another invocation ran this very study meanwhile
        return
    leases = renewer(settings.tracking_uri, settings.lease_seconds)
    leases.hold(run.run_id, run.parent_id)
    try:
        with run_guard(tracker, run.run_id, parent_id=run.parent_id, step=_step_label(base)) as guard:
            study = open_study(spec, base, settings)
            tracker.set_tags(run.run_id, {
                TAG_STUDY_NAME: name, TAG_STUDY_STORAGE: shown_storage(storage_url(settings)),
                TAG_STUDY_METRIC: spec.metric, TAG_STUDY_DIRECTION: spec.direction,
                TAG_STUDY_N_TRIALS: str(spec.n_trials), TAG_STUDY_DASHBOARD: dashboard_link(settings, study),
            })
            context = StudyContext(
                base=base, requirements=requirements, settings=settings, task_id=task_id, cluster=cluster,
                tracker=tracker, experiment=experiment, experiment_id=experiment_id, study_run_id=run.run_id,
                study_name=name, metric=spec.metric,
                known={}, base_plan=planned,
            )
            # One driver per study on this machine: a second one (another --n-trials of the same study) waits,
            # then goes on from what the first left.
            with file_lock(settings.work_dir / "locks" / f"study-{spec.identity(base)[:40]}.lock"):
                context.known.update(known_results(tracker, experiment_id, base.name, spec.metric, context.seen))
                _Driver(context, study, spec, reporter).run()
            best = _settle(context, study, spec)
            guard.end(ok=True, exit_code=0)
        run_index(settings.tracking_uri, settings.prefetch_limit).remember(
            experiment_id, RunRef(run.run_id, "FINISHED", key, int(time.time() * 1000)))
        report_status(reporter, f"done: study {name}, best {spec.metric} {best:.6g} (MLflow run {run.run_id})",
                      percent=100)
    finally:
        leases.release(run.run_id, run.parent_id)


def _step_label(base: ResolvedStep) -> str:
    return f"{base.name}-study"


# -- the study run --------------------------------------------------------------------------------------
def _open_study_run(planned: Plan, spec: StudySpec, cluster: Cluster, tracker: Tracker, experiment_id: str,
                    reaped: list[str]) -> OpenRun:
    """The study run under the invocation's parent: a study run of the same key that did not finish (its driver
    was killed) is reopened, so the study keeps one run whatever happened to its drivers."""
    base = planned.step
    parent_id = tracker.parent_run(experiment_id, base.pipeline, invocation_id())
    key = spec.key(base)
    searched = ", ".join(spec.space.params)
    tags = {**run_tags(planned, cluster, key), TAG_ROLE: "study",
            MLFLOW_RUN_NAME: f"{base.name} study: {spec.n_trials} trials over {searched}"[:250]}
    previous = _unfinished_study_run(tracker, experiment_id, key)
    try:
        if previous is not None:
            tracker.reopen_run(previous[0], previous[1], parent_id=parent_id, tags=tags)
            run_id = previous[0]
        else:
            fixed = {k: v for k, v in planned.params.items() if k not in spec.space.params}
            run_id = tracker.create_step_run(experiment_id, parent_id=parent_id, run_name=tags[MLFLOW_RUN_NAME],
                                             tags=tags, params={**fixed, **spec.params()})
    except BaseException:
        tracker.settle_parent(parent_id, step=_step_label(base), ok=False)
        raise
    describe_parent(tracker, parent_id)
    log_path = planned.settings.work_dir / "logs" / base.pipeline / f"{_step_label(base)}-{run_id}.log"
    return OpenRun(tracker, experiment_id, run_id, parent_id, log_path, reopened=previous is not None)


def _unfinished_study_run(tracker: Tracker, experiment_id: str, key: str) -> tuple[str, dict[str, str]] | None:
    runs = tracker.client.search_runs(
        [experiment_id], f"tags.`{TAG_CACHE_KEY}` = '{key}' and tags.`{TAG_ROLE}` = 'study'",
        order_by=["attributes.start_time DESC"], max_results=5)
    for found in runs:
        if found.info.status in ("KILLED", "FAILED") and found.data.tags.get(TAG_COMPLETE) != "true":
            return str(found.info.run_id), dict(found.data.tags)
    return None


def dashboard_link(settings: Settings, study: optuna.Study) -> str:
    """The study's page in optuna-dashboard as ``mltf-flow optuna-dashboard`` serves it."""
    return f"{settings.optuna_dashboard.rstrip('/')}/dashboard/studies/{study._study_id}"


# -- the Optuna study --------------------------------------------------------------------------------------
def open_study(spec: StudySpec, base: ResolvedStep, settings: Settings) -> optuna.Study:
    """The study in its storage, created on first use; a study of that name made for another search is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours to say
    name, url = spec.study_name(base), storage_url(settings)
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(storage=url, study_name=name, direction=spec.optuna_direction, load_if_exists=True,
                                    sampler=make_sampler(spec), pruner=make_pruner(spec))
    except (ImportError, ValueError) as exc:  # a driver for the URL missing, a URL Optuna does not take
        raise ConfigError(f"optuna_storage {shown_storage(url)!r}: {exc}. Use an RDB URL Optuna supports "
                          "(sqlite:///PATH, postgresql://..., mysql+pymysql://...).") from None
    identity = spec.identity(base)
    mine = study.user_attrs.get(ATTR_IDENTITY)
    if mine is None:
        study.set_user_attr(ATTR_IDENTITY, identity)
        study.set_user_attr(ATTR_STEP, base.name)
        study.set_user_attr(ATTR_PIPELINE, base.pipeline)
        # What --from-study gives a step: never a secret (the storage and its dashboard are no place for one; a
        # secret enters a key by name only, so the step given its own gets the best trial's key all the same).
        study.set_user_attr(ATTR_FIXED, {k: v for k, v in base.params.items()
                                         if k not in spec.space.params and not is_secret_param(k, v)})
        study.set_user_attr(ATTR_WORLD_SIZE, base.world_size)
    elif mine != identity:
        raise ConfigError(f"study {name!r} in {shown_storage(url)} was made for another search (step, code, fixed "
                          "parameters, space, metric, sampler or pruner differ): choose another study name, or "
                          "leave the name out to get one of its own.")
    return study


def known_results(tracker: Tracker, experiment_id: str, step: str, metric: str,
                  seen: set[str] | None = None) -> dict[str, tuple[str, float | None]]:
    """Complete runs of ``step`` in the experiment, by key, with their value of ``metric``: what makes a trial
    identical to an earlier run a cached one. One search (a page per 1,000 runs), not a query per trial.
    ``seen`` gets the key of every run of the step (any status): a trial whose key has none has no run to
    resume (mltf_flow.tune.trial)."""
    out: dict[str, tuple[str, float | None]] = {}
    token: str | None = None
    while True:
        page = tracker.client.search_runs(
            [experiment_id], f"tags.`{TAG_STEP}` = '{step}'", max_results=1000, page_token=token,
            order_by=["attributes.end_time DESC"])
        for found in page:
            key = found.data.tags.get(TAG_CACHE_KEY)
            if key and seen is not None:
                seen.add(key)
            complete = found.info.status == "FINISHED" and found.data.tags.get(TAG_COMPLETE) == "true"
            if key and complete and key not in out and found.data.tags.get(TAG_ROLE) != "study":
                value = found.data.metrics.get(metric)
                out[key] = (str(found.info.run_id), None if value is None else float(value))
        token = page.token
        if not token:
            return out


# -- the fan-out -------------------------------------------------------------------------------------------
class _Driver:
    """Asks Optuna for trials, runs them on free worker slots, tells Optuna how they ended."""

    def __init__(self, context: StudyContext, study: optuna.Study, spec: StudySpec, reporter: luigi.Task) -> None:
        self.context, self.study, self.spec, self.reporter = context, study, spec, reporter
        self.ended = 0

    def run(self) -> None:
        from mltf_flow.launch.local import LocalLauncher

        finished = self._prepare()
        to_run = max(0, self.spec.n_trials - finished)
        self.ended = finished
        if to_run == 0:
            return
        slots = trial_slots(self.context, self.spec)
        _log.info(f"study {self.context.study_name}: {to_run} trial(s) to run, {slots.size} at a time "
                  f"({finished} of {self.spec.n_trials} done before)")
        previous = LocalLauncher._trap_sigterm()  # SIGTERM stops the trials as Ctrl-C does
        try:
            self._fan_out(slots, to_run)
        finally:
            LocalLauncher._restore(previous)

    def _prepare(self) -> int:
        """Trials a dead driver left RUNNING: failed and enqueued again; returns how many trials ended before."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        storage = self.study._storage
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                storage.set_trial_system_attr(trial._trial_id, ATTR_RETRIED, True)
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
                self.study.enqueue_trial(dict(trial.params), skip_if_exists=False)
                _log.warning(f"study {self.context.study_name}: trial {trial.number} was left running by a driver "
                             "that stopped; it runs again")
        if not trials and self.spec.include_defaults:
            self.study.enqueue_trial(self.spec.space.defaults_point(self.context.base.params))
        if trials and self.spec.seed is not None:
            # A seeded sampler made afresh would propose the points of the driver before it again (cached, but
            # trials spent on nothing new): seeded by what the study holds, a resumed study is still reproducible.
            self.study.sampler = make_sampler(self.spec, offset=len(trials))
        return len(counted_trials(self.study))

    def _fan_out(self, slots: WorkerSlots, to_run: int) -> None:
        """Trials in flight: a few more than slots, so that trials' bookkeeping overlaps other trials' commands
        (:mod:`mltf_flow.tune.slots`); ask and tell happen here."""
        running: dict[Future[TrialOutcome], tuple[optuna.Trial, dict[str, Any]]] = {}
        in_flight, asked = slots.size + SPARE_TRIALS, 0
        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="mltf-trial") as pool:
            try:
                while running or asked < to_run:
                    while asked < to_run and len(running) < in_flight:
                        trial = self.study.ask()
                        point = typed_point(self.context.base, self.spec.space.suggest(trial))
                        running[pool.submit(run_trial, self.context, trial, point, slots)] = (trial, point)
                        asked += 1
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in done:
                        trial, point = running.pop(future)
                        self._tell(trial, point, future.result())  # WorkersGone: raised here, the study stops
            except BaseException:
                self.context.stopping.set()  # every running trial stops its command and ends its run KILLED
                slots.close()
                wait(list(running), timeout=120)
                raise

    def _tell(self, trial: optuna.Trial, point: Mapping[str, Any], outcome: TrialOutcome) -> None:
        from optuna.trial import TrialState

        if outcome.state == "interrupted":
            return  # left RUNNING in the storage: the next driver retries it
        if outcome.run_id:
            trial.set_user_attr("mlflow_run_id", outcome.run_id)
        if outcome.cached:
            trial.set_user_attr("cached", True)
        if outcome.state == "complete":
            assert outcome.value is not None
            self.study.tell(trial, outcome.value)
        elif outcome.state == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr("error", outcome.error[:2000])
            self.study.tell(trial, state=TrialState.FAIL)
        self.ended += 1
        self._say(trial, point, outcome)
        phases.reached(phases.TRIAL_TOLD)

    def _say(self, trial: optuna.Trial, point: Mapping[str, Any], outcome: TrialOutcome) -> None:
        shown = " ".join(f"{k}={_short(v)}" for k, v in point.items())
        state = "cached" if outcome.cached and outcome.state == "complete" else outcome.state
        value = f" {self.spec.metric}={outcome.value:.6g}" if outcome.value is not None else ""
        where = f", MLflow run {outcome.run_id}" if outcome.run_id else ""
        why = f": {outcome.error.splitlines()[0][:300]}" if outcome.state == "failed" and outcome.error else ""
        line = (f"trial {trial.number} [{state}]{value} {shown} ({outcome.duration_s:.1f} s{where}){why} "
                f"- {self.ended}/{self.spec.n_trials}")
        (_log.warning if outcome.state == "failed" else _log.info)(line)
        best = _best_value(self.study)
        report_status(self.reporter, f"{self.ended}/{self.spec.n_trials} trials; best {self.spec.metric} "
                      f"{'-' if best is None else f'{best:.6g}'}", percent=int(100 * self.ended / self.spec.n_trials))


def trial_slots(context: StudyContext, spec: StudySpec) -> WorkerSlots:
    """The slots of the study's trials (:mod:`mltf_flow.tune.slots`): groups of the trial's world size of the
    cluster's workers; a ``driver`` step's command runs here, so its slots only bound how many run at once."""
    base = context.base
    size = base.world_size or 1
    slots: list[Slot] = [None] * (spec.n_jobs or max(1, base.profile.expected_workers)) \
        if base.run_on == "driver" else \
        worker_groups(context.cluster.client, world_size=size, n_jobs=spec.n_jobs, step=base.name)
    return WorkerSlots(slots, client=context.cluster.client, world_size=size, study=context.study_name,
                       step=base.name, stopping=context.stopping)


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards ``n_trials``: complete, pruned, or failed by themselves (not retried ones)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not t.system_attrs.get(ATTR_RETRIED))]


def _best_value(study: optuna.Study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:  # no complete trial yet
        return None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- settling -----------------------------------------------------------------------------------------------
def _settle(context: StudyContext, study: optuna.Study, spec: StudySpec) -> float:
    """Tag the best trial and every outcome on the study run; a study without a complete trial fails."""
    from mlflow.entities import Metric
    from optuna.trial import TrialState

    tracker, run_id = context.tracker, context.study_run_id
    trials = counted_trials(study)
    states = {state: sum(1 for t in trials if t.state == state)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    summary = (f"{len(trials)}: {states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
               f"{states[TrialState.FAIL]} failed")
    record = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
               "run_id": t.user_attrs.get("mlflow_run_id"), "cached": bool(t.user_attrs.get("cached")),
               "error": t.user_attrs.get("error"),
               "intermediate": {str(k): v for k, v in t.intermediate_values.items()}} for t in trials]
    tracker.client.log_dict(run_id, {"study": context.study_name, "trials": record}, "mltf/trials.json")
    now = int(time.time() * 1000)
    metrics = [Metric(spec.metric, float(t.value), now, t.number) for t in trials
               if t.state == TrialState.COMPLETE and t.value is not None]
    for start in range(0, len(metrics), 1000):
        tracker.client.log_batch(run_id, metrics=metrics[start : start + 1000])
    tags = {TAG_STUDY_TRIALS: summary}
    best_value = _best_value(study)
    if best_value is None:
        tracker.set_tags(run_id, tags)
        raise StepError(f"study {context.study_name}: no trial completed ({summary}); see the trial runs under MLflow "
                        f"run {run_id} for why.", step=context.base.name, run_id=run_id)
    best = study.best_trial
    tags.update({TAG_STUDY_BEST_TRIAL: str(best.number), TAG_STUDY_BEST_VALUE: repr(best_value),
                 TAG_STUDY_BEST_PARAMS: json.dumps(best.params, sort_keys=True),
                 TAG_STUDY_BEST_RUN_ID: str(best.user_attrs.get("mlflow_run_id", ""))})
    tracker.set_tags(run_id, tags)
    tracker.client.log_metric(run_id, f"best_{spec.metric}", best_value)
    _log.info(f"study {context.study_name}: {summary}; best trial {best.number}: {spec.metric}={best_value:.6g} "
                 f"{json.dumps(best.params, sort_keys=True)} (MLflow run {best.user_attrs.get('mlflow_run_id')}). "
                 f"Give step '{context.base.name}' these parameters with --from-study {context.study_name}")
    return best_value


__all__ = ["ATTR_FIXED", "ATTR_IDENTITY", "ATTR_WORLD_SIZE", "counted_trials", "dashboard_link", "known_results",
           "open_study", "run_study", "trial_slots"]
