"""Fast, read-only lookup of complete step runs, without importing mlflow.

Luigi calls ``complete()`` on every task of a DAG, often twice, so this path must be cheap:

* an ``http(s)://`` tracking server is asked through its REST API with ``urllib``
  (``POST /api/2.0/mlflow/runs/search``), the same filter MLflow's client would send;
* an embedded ``sqlite:///`` store is read directly with :mod:`sqlite3` in read-only mode (MLflow's
  ``runs``/``tags``/``experiments`` tables; tests check the answers against ``MlflowClient``).

Per process, the first lookup in an experiment *prefetches* every complete run (newest first, up to
``prefetch_limit``) in one paged query, so checking hundreds of cached steps costs a few round trips.
A miss is always confirmed with one targeted query, because a run may have completed after the
prefetch (for instance in this very process).

A run is complete when ``status = FINISHED`` **and** tag ``mltf.complete = true``: MLflow marks a run
FINISHED even after ``sys.exit(3)``, so only our launcher's tag is trusted.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from mltf_flow.errors import TrackingError
from mltf_flow.redaction import split_userinfo, strip_credentials
from mltf_flow.tags import TAG_CACHE_KEY, TAG_COMPLETE

TAG_KEY = TAG_CACHE_KEY  # this module's name for it since the start (see mltf_flow.tags)
_COMPLETE_FILTER = f"tags.`{TAG_COMPLETE}` = 'true' and attributes.status = 'FINISHED'"
_PAGE = 1000


@dataclass(frozen=True)
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

    def find_with_status(self, experiment: str, key: str, status: str) -> list[RunRef]:
        """All runs of ``experiment`` with cache key ``key`` in ``status`` (e.g. RUNNING)."""
        exp_id = self.experiment_id(experiment)
        if exp_id is None:
            return []
        return self._search(exp_id, key=key, status=status, max_results=_PAGE)

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
        self, exp_id: str, *, key: str | None = None, status: str | None = None, complete: bool = False,
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

    def _experiment_id(self, name: str) -> str | None:
        rows = self._query(
            "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'", (name,)
        )
        return str(rows[0][0]) if rows else None

    def _search(
        self, exp_id: str, *, key: str | None = None, status: str | None = None, complete: bool = False,
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
        if status is not None:
            sql += " AND r.status = ?"
            args.append(status)
        if key is not None:
            sql += " AND k.value = ?"
            args.append(key)
        sql += " ORDER BY r.end_time DESC, r.start_time DESC LIMIT ?"
        args.append(max_results)
        return [RunRef(r[0], r[1], r[2], r[3]) for r in self._query(sql, tuple(args))]


class RestRunIndex(RunIndex):
    """Talks to an MLflow server's REST API with urllib (credentials as MLflow's client reads them)."""

    def __init__(self, tracking_uri: str, prefetch_limit: int = 5000) -> None:
        super().__init__(tracking_uri.rstrip("/"), prefetch_limit)
        # http://user:password@host: urllib would take "user:password@host" for the host name ("Name or service
        # not known"); send the user info as Basic credentials instead, as MLflow's client (requests) does.
        self._base, self._url_user, self._url_password = split_userinfo(self.tracking_uri)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if not (user and password) and self._url_user:
            user, password = self._url_user, self._url_password or ""
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if user and password:  # MLflow's own order: Basic wins over a bearer token
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """One REST call (``path`` below ``/api/2.0/mlflow/``); None for 404. Also used for the few writes
        that must not wait for ``import mlflow`` (a job's wrapper marking its run RUNNING)."""
        from mltf_flow.tracking_server import check_server

        check_server(self.tracking_uri)  # once per process: a server that does not answer fails fast, loudly
        url = f"{self._base}/api/2.0/mlflow/{path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=self._headers())
        self.round_trips += 1
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace")[:500]
            raise TrackingError(
                f"MLflow server {_redact_uri(self.tracking_uri)} answered {exc.code} to {method} {path}: {detail}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"cannot reach the MLflow server {_redact_uri(self.tracking_uri)} ({exc}). Is it running? "
                "Check tracking_uri / MLFLOW_TRACKING_URI."
            ) from exc

    def _experiment_id(self, name: str) -> str | None:
        query = urllib.parse.urlencode({"experiment_name": name})
        answer = self.call("GET", f"experiments/get-by-name?{query}")
        if not answer:
            return None
        exp = answer["experiment"]
        return str(exp["experiment_id"]) if exp.get("lifecycle_stage", "active") == "active" else None

    def _search(
        self, exp_id: str, *, key: str | None = None, status: str | None = None, complete: bool = False,
        max_results: int,
    ) -> list[RunRef]:
        clauses = [f"tags.`{TAG_CACHE_KEY}` = '{key}'"] if key is not None else []
        if complete:
            clauses.append(_COMPLETE_FILTER)
        if status is not None:
            clauses.append(f"attributes.status = '{status}'")
        filter_string = " and ".join(clauses) or f"tags.`{TAG_CACHE_KEY}` != ''"
        refs: list[RunRef] = []
        token: str | None = None
        while len(refs) < max_results:
            body: dict[str, Any] = {
                "experiment_ids": [exp_id],
                "filter": filter_string,
                "max_results": min(_PAGE, max_results - len(refs)),
                "order_by": ["attributes.end_time DESC"],
            }
            if token:
                body["page_token"] = token
            answer = self.call("POST", "runs/search", body) or {}
            for run in answer.get("runs", []):
                tags = {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}
                info = run["info"]
                refs.append(
                    RunRef(info["run_id"], info["status"], tags.get(TAG_CACHE_KEY, ""), info.get("end_time"), tags)
                )
            token = answer.get("next_page_token")
            if not token:
                break
        return refs


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
