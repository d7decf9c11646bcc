"""The MLflow record of a schedule's fires: one pipeline parent run per fire, created before the pipeline
runs (so a fire with nothing to do is in the history too), found by the schedule's id, ended with the fire's
outcome.

The steps of the fire attach their runs to it (they find it by the invocation id, as every step finds its
parent: :meth:`mltf_flow.tracking.Tracker.parent_run`). A fire with nothing to do must cost about what a
cached rerun costs, which never imports mlflow (1-2 s): against a tracking server the record is written
through MLflow's REST API (the same calls its client makes); on the embedded sqlite store MLflow's client
writes it (the store's schema is MLflow's).
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mltf_flow.config import Settings
from mltf_flow.lease import is_stale
from mltf_flow.tags import (
    MLFLOW_RUN_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
    TAG_ROLE,
    TAG_SCHEDULE_ID,
    TAG_SCHEDULE_OUTCOME,
)


@dataclass(frozen=True)
class FireRun:
    run_id: str
    status: str
    start_time: int
    tags: Mapping[str, str]


class FireRecord:
    """Reads and writes the parent runs of one schedule's fires in the experiment ``experiment``."""

    def __init__(self, settings: Settings, experiment: str) -> None:
        self.settings = settings
        self.experiment = experiment
        self._store: _Store = (_Rest(settings.tracking_uri) if settings.tracking_uri.startswith(("http://", "https://"))
                               else _Client(settings.tracking_uri))
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._store.experiment(self.experiment)
        return self._experiment_id

    def open(self, run_name: str, tags: Mapping[str, str]) -> str:
        """Create the fire's parent run (RUNNING); its id."""
        return self._store.create(self.experiment_id, {
            **tags, TAG_ROLE: "pipeline", MLFLOW_RUN_NAME: run_name, MLFLOW_USER: getpass.getuser(),
            MLFLOW_SOURCE_TYPE: "PROJECT",
        })

    def fires(self, schedule_id: str, max_results: int = 50) -> list[FireRun]:
        """The schedule's fires, newest first."""
        return self._store.search(self.experiment_id, f"tags.`{TAG_SCHEDULE_ID}` = '{schedule_id}'", max_results)

    def unfinished(self, schedule_id: str, mine: FireRun) -> list[FireRun]:
        """Fires of the schedule that started before ``mine`` and have not recorded an outcome, whose owner is
        alive (:func:`mltf_flow.lease.is_stale`): the fires ``mine`` overlaps. A fire found stale (its process
        was killed) is ended KILLED on the way."""
        running = []
        for fire in self.fires(schedule_id):
            if fire.run_id == mine.run_id or TAG_SCHEDULE_OUTCOME in fire.tags:
                continue
            if (fire.start_time, fire.run_id) > (mine.start_time, mine.run_id):
                continue  # started after this one: it waits for (or skips) this one, not the other way round
            if is_stale(fire.tags, fire.start_time, self.settings.lease_seconds):
                self.close(fire.run_id, {TAG_SCHEDULE_OUTCOME: "lost: its process ended without an outcome"},
                           "KILLED")
                continue
            running.append(fire)
        return running

    def get(self, run_id: str) -> FireRun:
        return self._store.get(run_id)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._store.set_tags(run_id, tags)

    def close(self, run_id: str, tags: Mapping[str, str], status: str) -> None:
        self._store.set_tags(run_id, tags)
        self._store.end(run_id, status)


class _Store:
    def experiment(self, name: str) -> str:
        raise NotImplementedError

    def create(self, experiment_id: str, tags: Mapping[str, str]) -> str:
        raise NotImplementedError

    def search(self, experiment_id: str, filter_string: str, max_results: int) -> list[FireRun]:
        raise NotImplementedError

    def get(self, run_id: str) -> FireRun:
        raise NotImplementedError

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        raise NotImplementedError

    def end(self, run_id: str, status: str) -> None:
        raise NotImplementedError


class _Rest(_Store):
    """MLflow's REST API (:class:`mltf_flow.tracking_rest.TrackingRest`: its credentials and errors; the
    experiment looked up through the process's :class:`mltf_flow.run_index.RunIndex`, which caches it)."""

    def __init__(self, tracking_uri: str) -> None:
        from mltf_flow.run_index import run_index
        from mltf_flow.tracking_rest import TrackingRest

        self.index = run_index(tracking_uri)
        self.rest = TrackingRest(tracking_uri, max_retries=0, timeout=60)

    def experiment(self, name: str) -> str:
        found = self.index.experiment_id(name)
        if found is not None:
            return found
        answer = self.rest.call("POST", "experiments/create", {"name": name})
        if answer is None:  # created by another fire just now
            self.index.forget()
            found = self.index.experiment_id(name)
            assert found is not None
            return found
        self.index.forget()
        return str(answer["experiment_id"])

    def create(self, experiment_id: str, tags: Mapping[str, str]) -> str:
        answer = self.rest.call("POST", "runs/create", {
            "experiment_id": experiment_id, "start_time": int(time.time() * 1000), "run_name": tags[MLFLOW_RUN_NAME],
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }) or {}
        return str(answer["run"]["info"]["run_id"])

    def search(self, experiment_id: str, filter_string: str, max_results: int) -> list[FireRun]:
        runs, _ = self.rest.search_runs([experiment_id], filter_string, max_results, ["attributes.start_time DESC"])
        return [_fire(run) for run in runs]

    def get(self, run_id: str) -> FireRun:
        return _fire(self.rest.get_run(run_id))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.rest.set_tags(run_id, tags)

    def end(self, run_id: str, status: str) -> None:
        self.rest.terminate(run_id, status)


def _fire(run: Mapping[str, Any]) -> FireRun:
    info = run["info"]
    tags = {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}
    return FireRun(str(info["run_id"]), str(info["status"]), int(info.get("start_time") or 0), tags)


class _Client(_Store):
    """MLflow's client (the embedded sqlite store)."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)

    def experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except Exception:  # created by another fire just now
            again = self.client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)

    def create(self, experiment_id: str, tags: Mapping[str, str]) -> str:
        run = self.client.create_run(experiment_id, run_name=tags[MLFLOW_RUN_NAME], tags=dict(tags))
        return str(run.info.run_id)

    def search(self, experiment_id: str, filter_string: str, max_results: int) -> list[FireRun]:
        runs = self.client.search_runs([experiment_id], filter_string, max_results=max_results,
                                       order_by=["attributes.start_time DESC"])
        return [FireRun(r.info.run_id, r.info.status, int(r.info.start_time or 0), dict(r.data.tags)) for r in runs]

    def get(self, run_id: str) -> FireRun:
        r = self.client.get_run(run_id)
        return FireRun(r.info.run_id, r.info.status, int(r.info.start_time or 0), dict(r.data.tags))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)
