"""Fast, read-only lookup of complete step runs, without importing mlflow.

Luigi calls ``complete()`` on every task of a DAG, often twice, so this path must be cheap:

* an ``http(s)://`` tracking server is asked through its REST API with ``urllib``
  (``POST /api/2.0/mlflow/runs/search``), the same filter MLflow's client would send;
* an embedded ``sqlite:///`` store is read directly with :mod:`sqlite3` in read-only mode (MLflow's
  ``runs``/``tags``/``experiments`` tables; tests check the answers against ``MlflowClient``).

Per process, the first lookup in an experiment *prefetches* every complete run (newest first, up to
``prefetch_limit``), so checking hundreds of cached steps costs a few round trips. (Asking a server for
exactly a DAG's keys is not possible: MLflow's search grammar has no ``IN`` or ``OR`` for tags, 3.17: ``IN``
only for ``attributes.run_id``; and a server's cost is per run returned, 0.3-0.5 ms, so a DAG of N cached
steps costs N runs' worth however they are asked for.) A miss is always confirmed with one targeted query,
because a run may have completed after the prefetch (for instance in this very process).

A run is complete when ``status = FINISHED`` **and** tag ``mltf.complete = true``: MLflow marks a run
FINISHED even after ``sys.exit(3)``, so only our launcher's tag is trusted.
"""

from __future__ import annotations

import heapq
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mltf_flow.errors import TrackingError
from mltf_flow.redaction import strip_credentials
from mltf_flow.tags import TAG_CACHE_KEY, TAG_COMPLETE
from mltf_flow.tracking_rest import TrackingRest

TAG_KEY = TAG_CACHE_KEY  # this module's name for it since the start (see mltf_flow.tags)
_COMPLETE_FILTER = f"tags.`{TAG_COMPLETE}` = 'true' and attributes.status = 'FINISHED'"
_PAGE = 1000
#: A run's statuses in MLflow (mlflow.entities.RunStatus).
_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


@dataclass(frozen=True, slots=True)  # slots: a prefetch builds one per complete run (0.9 vs 1.4 us each)
class RunRef:
    """The few facts about a run that completeness checks need."""

    run_id: str
    status: str
    cache_key: str
    end_time: int | None = None
    tags: dict[str, str] = field(default_factory=dict)


def _redact_uri(uri: str) -> str:
    return strip_credentials(uri)


class RunIndex:
    """Complete-run lookup for one tracking URI; use :func:`run_index` to get the shared instance."""

    def __init__(self, tracking_uri: str, prefetch_limit: int = 5000) -> None:
        self.tracking_uri = tracking_uri
        self.prefetch_limit = prefetch_limit
        self.round_trips = 0
        self._experiments: dict[str, str | None] = {}
        self._complete: dict[str, dict[str, RunRef]] = {}

    # -- public API ---------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str | None:
        """The id of experiment ``name``, or None if it does not exist (yet)."""
        if self._experiments.get(name) is None:
            self._experiments[name] = self._experiment_id(name)
        return self._experiments[name]

    def find_complete(self, experiment: str, key: str) -> RunRef | None:
        """The newest complete run of ``experiment`` (a name) with cache key ``key``, or None."""
        exp_id = self.experiment_id(experiment)
        if exp_id is None:
            return None
        if exp_id not in self._complete:
            self._complete[exp_id] = self._prefetch(exp_id)
        hit = self._complete[exp_id].get(key)
        if hit is None:
            found = self._search(exp_id, key=key, complete=True, max_results=1)
            hit = found[0] if found else None
            if hit is not None:
                self._complete[exp_id][key] = hit
        return hit

    def find_with_status(self, experiment: str, key: str, status: str, *more: str) -> list[RunRef]:
        """All runs of ``experiment`` with cache key ``key`` in ``status`` (e.g. RUNNING) or one of ``more``, in
        that order of statuses (one query for all)."""
        exp_id = self.experiment_id(experiment)
        if exp_id is None:
            return []
        statuses = (status, *more)
        found = self._search(exp_id, key=key, statuses=statuses, max_results=_PAGE * len(statuses))
        return sorted(found, key=lambda ref: statuses.index(ref.status))  # stable: newest first within a status

    def remember(self, experiment_id: str, ref: RunRef) -> None:
        """Record a run this process just completed, so later checks need no query."""
        self._complete.setdefault(experiment_id, {})[ref.cache_key] = ref

    def forget(self) -> None:
        """Drop cached answers (e.g. after runs were deleted)."""
        self._experiments.clear()
        self._complete.clear()

    # -- backends -----------------------------------------------------------------------------
    def _prefetch(self, exp_id: str) -> dict[str, RunRef]:
        out: dict[str, RunRef] = {}
        if self.prefetch_limit <= 0:
            return out
        for ref in self._search(exp_id, complete=True, max_results=self.prefetch_limit):
            out.setdefault(ref.cache_key, ref)  # newest first: keep the first seen
        return out

    def _experiment_id(self, name: str) -> str | None:
        raise NotImplementedError

    def _search(
        self, exp_id: str, *, key: str | None = None, statuses: tuple[str, ...] = (), complete: bool = False,
        max_results: int,
    ) -> list[RunRef]:
        """Runs of ``exp_id`` carrying a cache key, filtered, newest end time first."""
        raise NotImplementedError


class SqliteRunIndex(RunIndex):
    """Reads MLflow's sqlite schema directly (read-only; a missing file means no runs yet)."""

    def __init__(self, tracking_uri: str, prefetch_limit: int = 5000) -> None:
        super().__init__(tracking_uri, prefetch_limit)
        # SQLAlchemy form: sqlite:////abs/path.db is absolute, sqlite:///rel.db relative to the CWD.
        self.path = tracking_uri[len("sqlite:///") :] if tracking_uri.startswith("sqlite:///") else ""
        if not self.path:
            raise TrackingError(f"cannot read {tracking_uri!r}: expected sqlite:///ABSOLUTE/PATH.")

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if not os.path.exists(self.path):
            return []
        self.round_trips += 1
        # A fresh connection per query: nothing open survives a fork of the Luigi process.
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # a store MLflow has not initialised yet holds no runs
            raise TrackingError(f"reading the tracking store {self.path} failed: {exc}") from exc
        finally:
            conn.close()

    # Driven from the cache-key tags, without ORDER BY: sorting in SQL cost more than the query itself
    # (1,000 complete runs: 7.0 ms ordered vs 4.5 ms unordered, one key 1.2 ms); the newest is picked below.
    _COMPLETE_SQL = (
        "SELECT r.run_uuid, r.status, k.value, r.end_time, r.start_time FROM tags k "
        "JOIN runs r ON r.run_uuid = k.run_uuid "
        "JOIN tags c ON c.run_uuid = k.run_uuid AND c.key = ? AND c.value = 'true' "
        "WHERE k.key = ? AND r.experiment_id = ? AND r.lifecycle_stage = 'active' AND r.status = 'FINISHED'"
    )

    def _prefetch(self, exp_id: str) -> dict[str, RunRef]:
        if self.prefetch_limit <= 0:
            return {}
        rows = self._query(self._COMPLETE_SQL, (TAG_COMPLETE, TAG_CACHE_KEY, int(exp_id)))
        if len(rows) > self.prefetch_limit:  # the newest prefetch_limit runs, as ORDER BY end_time DESC LIMIT would
            rows = heapq.nlargest(self.prefetch_limit, rows, key=lambda r: (r[3] or 0, r[4] or 0))
        return {ref.cache_key: ref for ref in self._newest(rows)}

    @staticmethod
    def _newest(rows: list[tuple[Any, ...]]) -> list[RunRef]:
        """The newest run (end time, then start time) of each key among ``rows``."""
        newest: dict[str, tuple[Any, ...]] = {}
        for row in rows:
            seen = newest.get(row[2])
            if seen is None or (row[3] or 0, row[4] or 0) > (seen[3] or 0, seen[4] or 0):
                newest[row[2]] = row
        return [RunRef(r[0], r[1], r[2], r[3]) for r in newest.values()]

    def _experiment_id(self, name: str) -> str | None:
        rows = self._query(
            "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'", (name,)
        )
        return str(rows[0][0]) if rows else None

    def _search(
        self, exp_id: str, *, key: str | None = None, statuses: tuple[str, ...] = (), complete: bool = False,
        max_results: int,
    ) -> list[RunRef]:
        sql = (
            "SELECT r.run_uuid, r.status, k.value, r.end_time FROM runs r "
            "JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = ? "
            "WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'"
        )
        args: list[Any] = [TAG_CACHE_KEY, int(exp_id)]
        if complete:
            sql += (
                " AND r.status = 'FINISHED' AND EXISTS (SELECT 1 FROM tags c WHERE c.run_uuid = r.run_uuid"
                " AND c.key = ? AND c.value = 'true')"
            )
            args.append(TAG_COMPLETE)
        if statuses:
            sql += f" AND r.status IN ({', '.join('?' * len(statuses))})"
            args.extend(statuses)
        if key is not None:
            sql += " AND k.value = ?"
            args.append(key)
        sql += " ORDER BY r.end_time DESC, r.start_time DESC LIMIT ?"
        args.append(max_results)
        return [RunRef(r[0], r[1], r[2], r[3]) for r in self._query(sql, tuple(args))]


class RestRunIndex(RunIndex):
    """Talks to an MLflow server's REST API (:class:`mltf_flow.tracking_rest.TrackingRest`: credentials and
    TLS as MLflow's client reads them; one try per call, so a check that cannot be answered says so at once)."""

    def __init__(self, tracking_uri: str, prefetch_limit: int = 5000) -> None:
        super().__init__(tracking_uri.rstrip("/"), prefetch_limit)
        self.rest = TrackingRest(self.tracking_uri, check=True, max_retries=0, timeout=60)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """One REST call (``path`` below ``/api/2.0/mlflow/``); None for 404."""
        self.round_trips += 1
        return self.rest.call(method, path, body)

    def _experiment_id(self, name: str) -> str | None:
        self.round_trips += 1
        exp = self.rest.experiment_by_name(name)
        if not exp:
            return None
        return str(exp["experiment_id"]) if exp.get("lifecycle_stage", "active") == "active" else None

    def _search(
        self, exp_id: str, *, key: str | None = None, statuses: tuple[str, ...] = (), complete: bool = False,
        max_results: int,
    ) -> list[RunRef]:
        clauses = [f"tags.`{TAG_CACHE_KEY}` = '{key}'"] if key is not None else []
        if complete:
            clauses.append(_COMPLETE_FILTER)
        # Several statuses: the others left out (every MLflow server knows "!="; "IN" on a status is recent).
        if len(statuses) == 1:
            clauses.append(f"attributes.status = '{statuses[0]}'")
        elif statuses:
            clauses += [f"attributes.status != '{other}'" for other in _STATUSES if other not in statuses]
        filter_string = " and ".join(clauses) or f"tags.`{TAG_CACHE_KEY}` != ''"
        found = [ref for page in self._pages(exp_id, filter_string, max_results) for ref in page]
        return [ref for ref in found if not statuses or ref.status in statuses]

    def _pages(self, exp_id: str, filter_string: str, max_results: int) -> Iterator[list[RunRef]]:
        """Pages of matching runs carrying a cache key, newest end time first, ``max_results`` in all."""
        token: str | None = None
        left = max_results
        while left > 0:
            self.round_trips += 1
            runs, token = self.rest.search_runs([exp_id], filter_string, min(_PAGE, left),
                                                ["attributes.end_time DESC"], token)
            page = []
            for run in runs:
                tags = {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}
                info = run["info"]
                page.append(
                    RunRef(info["run_id"], info["status"], tags.get(TAG_CACHE_KEY, ""), info.get("end_time"), tags))
            left -= len(page)
            yield page
            if not token:
                return


_INDEXES: dict[tuple[int, str], RunIndex] = {}


def run_index(tracking_uri: str, prefetch_limit: int = 5000) -> RunIndex:
    """The per-process index for ``tracking_uri`` (a forked child gets its own)."""
    slot = (os.getpid(), tracking_uri)
    if slot not in _INDEXES:
        if tracking_uri.startswith("sqlite:"):
            _INDEXES[slot] = SqliteRunIndex(tracking_uri, prefetch_limit)
        elif tracking_uri.startswith(("http://", "https://")):
            _INDEXES[slot] = RestRunIndex(tracking_uri, prefetch_limit)
        else:
            raise TrackingError(
                f"tracking URI {_redact_uri(tracking_uri)!r} is not supported for completeness checks: "
                "use sqlite:///PATH or http(s)://HOST:PORT."
            )
    return _INDEXES[slot]
