"""What ``mltf-flow status`` says about a study (:class:`mltf_flow.tune.step.TuneStep`), below its step's line::

    objective (study)  will run  (key 9c1e4d2a…)
                         study run 3f2a…: KILLED (stopped; a rerun of the same command continues it)
                         trials: 3 of 20: 2 complete, 0 pruned, 1 failed (study toy.objective.b60dd8fe2dcb)
                         1 trial(s) left RUNNING (a rerun runs them again)
                         best score -0.0021 at x=0.346 (trial 2, MLflow run 1215…)
                         dashboard: http://127.0.0.1:8080/dashboard/studies/1

The study run comes from the tracking store (the newest run of the study's key, whatever its status); the
trials from the Optuna storage, opened to read: status never creates the storage, its tables or a study.
Optuna is imported only here, so only when a study is shown.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.tags import TAG_CACHE_KEY, TAG_COMPLETE, TAG_ERROR, TAG_HOST, TAG_PID, TAG_ROLE

if TYPE_CHECKING:
    from mltf_flow.config import Settings

_log = logging.getLogger(__name__)


def study_notes(step: Any, key: str | None) -> tuple[str, ...]:
    """The lines about the study of ``step`` (a TuneStep) whose key is ``key`` (None: an upstream result is
    missing, so the study's identity is not known yet)."""
    base = None if key is None else step.describe()
    if key is None or base is None:
        return ("study: known once its upstream steps ran (its key and name depend on their results)",)
    settings, spec = step.settings(), step.study_spec()
    run = _newest_study_run(settings, step.pipeline_name(), key)
    lines = [_run_line(run, settings)]
    running = run is not None and run.info.status == "RUNNING"
    lines.extend(_trial_lines(settings, spec, spec.study_name(base), driver_alive=running))
    return tuple(lines)


def _newest_study_run(settings: Settings, pipeline: str, key: str) -> Any:
    from mltf_flow.run_index import run_index

    experiment_id = run_index(settings.tracking_uri, settings.prefetch_limit).experiment_id(
        settings.experiment_for(pipeline))
    if experiment_id is None:
        return None
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking_uri=settings.tracking_uri).search_runs(
        [experiment_id], f"tags.`{TAG_CACHE_KEY}` = '{key}' and tags.`{TAG_ROLE}` = 'study'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def _run_line(run: Any, settings: Settings) -> str:
    if run is None:
        return "study: no study run yet"
    run_id, status, tags = run.info.run_id, run.info.status, run.data.tags
    head = f"study run {run_id}"
    if status == "FINISHED" and tags.get(TAG_COMPLETE) == "true":
        return f"{head}: complete"
    if status == "RUNNING":
        from mltf_flow.lease import expires_at, is_stale

        holder = f"{tags.get(TAG_HOST, '?')} pid {tags.get(TAG_PID, '?')}"
        until = expires_at(tags, run.info.start_time, settings.lease_seconds)
        if is_stale(tags, run.info.start_time, settings.lease_seconds):
            return (f"{head}: RUNNING, but its driver ({holder}) is gone (lease expired "
                    f"{_utc(until)}); a rerun of the same command reaps and continues it")
        return f"{head}: running, held by {holder} (lease until {_utc(until)})"
    why = "stopped" if status == "KILLED" else (tags.get(TAG_ERROR) or "failed").splitlines()[0][:200]
    return f"{head}: {status} ({why}; a rerun of the same command continues it)"


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _trial_lines(settings: Settings, spec: Any, name: str, *, driver_alive: bool) -> list[str]:
    """Counts, trials left RUNNING, the best trial and the dashboard link, from the Optuna storage."""
    from mltf_flow.tune.spec import shown_storage, storage_url

    url = storage_url(settings)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return [f"trials: none yet (no Optuna storage at {shown_storage(url)})"]
    try:
        study = _load(url, name)
    except ImportError:
        return ["trials: not shown: optuna is not installed here (pip install 'mltf_flow[hpo]')"]
    except KeyError:
        return [f"trials: none yet (no study {name!r} in {shown_storage(url)})"]
    from optuna.trial import TrialState

    from mltf_flow.tune.study import counted_trials, dashboard_link

    counted = counted_trials(study)
    states = [sum(1 for t in counted if t.state == s) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                               TrialState.FAIL)]
    lines = [f"trials: {len(counted)} of {spec.n_trials}: {states[0]} complete, {states[1]} pruned, "
             f"{states[2]} failed (study {name})"]
    running = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    if running:
        lines.append(f"{running} trial(s) running now" if driver_alive
                     else f"{running} trial(s) left RUNNING (a rerun runs them again)")
    if states[0]:
        best = study.best_trial
        shown = " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        lines.append(f"best {spec.metric} {best.value:.6g} at {shown or '(no parameters)'} (trial {best.number}, "
                     f"MLflow run {best.user_attrs.get('mlflow_run_id', '?')})")
    else:
        lines.append("best: none yet (no trial completed)")
    lines.append(f"dashboard: {dashboard_link(settings, study)}")
    return lines


def _load(url: str, name: str) -> Any:
    """The study ``name`` in the storage at ``url``, read as it is: no table is created, no study either
    (a KeyError when there is none)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())


__all__ = ["study_notes"]
