"""The gateway's database: submissions, users' sealed secrets and the job credentials in force.

Everything a submission needs to go on after the gateway restarts is here, written before the request is
answered: a submission accepted is a row, and the row says how far it got (``state``; ``run_id`` and
``job_ids`` once they exist). :mod:`mltf_flow.gateway.lifecycle` resumes every row that has not ended.

SQLAlchemy Core (it comes with MLflow) over any URL it knows: ``sqlite:///...`` by default, PostgreSQL on a
facility. Tokens are never stored: a job credential is kept as its id (``jti``) and expiry, users' secrets
only sealed (:mod:`mltf_flow.gateway.user_secrets`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.errors import NotFound

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

#: States a submission does not leave.
ENDED = ("finished", "failed", "cancelled")
#: Every state, in the order a submission goes through them.
STATES = ("accepted", "staging", "submitting", "queued", "running", *ENDED)


@dataclass
class Submission:
    """One row of ``submissions``. ``request`` is what the user asked for (kind-specific keys: entry_point,
    target, params, backend_config, profile, experiment); ``details`` what the gateway learned on the way
    (rule ids, staged inputs, the job's log)."""

    id: str
    user: str
    kind: str
    state: str
    request: dict[str, Any]
    source: dict[str, Any]
    created: float
    updated: float
    message: str = ""
    run_id: str | None = None
    experiment_id: str | None = None
    job_ids: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def job_name(self) -> str:
        """The SLURM job name of its (first) job: how a restarted gateway finds a job it submitted but did not
        record."""
        return f"mltf-gw-{self.id}"

    def public(self) -> dict[str, Any]:
        """What the API shows (everything; nothing here is secret)."""
        return {"id": self.id, "user": self.user, "kind": self.kind, "state": self.state, "message": self.message,
                "request": self.request, "source": self.source, "created": self.created, "updated": self.updated,
                "run_id": self.run_id, "experiment_id": self.experiment_id, "job_ids": self.job_ids,
                "details": self.details, "cancel_requested": self.cancel_requested}


def _tables() -> Any:
    from sqlalchemy import Boolean, Column, Float, Index, MetaData, String, Table, Text, UniqueConstraint

    meta = MetaData()
    Table("submissions", meta,
          Column("id", String(32), primary_key=True),
          Column("user", String(255), nullable=False, index=True),
          Column("kind", String(16), nullable=False),
          Column("state", String(16), nullable=False, index=True),
          Column("request", Text, nullable=False),
          Column("source", Text, nullable=False),
          Column("created", Float, nullable=False),
          Column("updated", Float, nullable=False),
          Column("message", Text, nullable=False, default=""),
          Column("run_id", String(64)),
          Column("experiment_id", String(64)),
          Column("job_ids", Text, nullable=False, default="[]"),
          Column("details", Text, nullable=False, default="{}"),
          Column("cancel_requested", Boolean, nullable=False, default=False),
          Column("idempotency_key", String(255)),
          UniqueConstraint("user", "idempotency_key", name="uq_submission_idempotency"))
    Table("user_secrets", meta,
          Column("user", String(255), primary_key=True),
          Column("name", String(128), primary_key=True),
          Column("sealed", Text, nullable=False),
          Column("created", Float, nullable=False))
    Table("job_credentials", meta,
          Column("jti", String(64), primary_key=True),
          Column("submission_id", String(32), nullable=False),
          Column("user", String(255), nullable=False),
          Column("expires", Float, nullable=False),
          Column("revoked", Boolean, nullable=False, default=False),
          Index("ix_job_credentials_submission", "submission_id"))
    return meta


class Store:
    """The database behind one gateway (thread safe: SQLAlchemy's pool, one transaction per call)."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine, event

        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            # WAL: the API reads while the lifecycle writes; busy_timeout instead of "database is locked".
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.close()
        self.meta = _tables()
        self.meta.create_all(self.engine)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _t(self, name: str) -> Any:
        return self.meta.tables[name]

    # submissions -----------------------------------------------------------------------------------------
    def add_submission(self, user: str, kind: str, request: Mapping[str, Any], source: Mapping[str, Any],
                       idempotency_key: str | None = None) -> tuple[Submission, bool]:
        """A new row in state ``accepted`` (committed when this returns), or the row an earlier request with the
        same ``idempotency_key`` made; the flag says whether it is new."""
        from sqlalchemy.exc import IntegrityError

        t = self._t("submissions")
        if idempotency_key:
            earlier = self._by_key(user, idempotency_key)
            if earlier is not None:
                return earlier, False
        now = time.time()
        sid = secrets.token_hex(8)
        row = {"id": sid, "user": user, "kind": kind, "state": "accepted", "request": json.dumps(dict(request)),
               "source": json.dumps(dict(source)), "created": now, "updated": now, "message": "",
               "job_ids": "[]", "details": "{}", "cancel_requested": False, "idempotency_key": idempotency_key}
        try:
            with self._tx() as conn:
                conn.execute(t.insert().values(**row))
        except IntegrityError:  # the same key, sent twice at once: the other request's row
            earlier = self._by_key(user, idempotency_key or "")
            if earlier is None:
                raise
            return earlier, False
        return self.get(sid), True

    def _by_key(self, user: str, key: str) -> Submission | None:
        t = self._t("submissions")
        with self._tx() as conn:
            row = conn.execute(t.select().where(t.c.user == user, t.c.idempotency_key == key)).mappings().first()
        return _submission(row) if row is not None else None

    def get(self, submission_id: str) -> Submission:
        t = self._t("submissions")
        with self._tx() as conn:
            row = conn.execute(t.select().where(t.c.id == submission_id)).mappings().first()
        if row is None:
            raise NotFound(f"no submission {submission_id!r}.")
        return _submission(row)

    def submissions(self, user: str | None = None, *, open_only: bool = False, limit: int = 200) -> list[Submission]:
        """Newest first; ``user`` None: everyone's."""
        t = self._t("submissions")
        query = t.select().order_by(t.c.created.desc()).limit(limit)
        if user is not None:
            query = query.where(t.c.user == user)
        if open_only:
            query = query.where(t.c.state.not_in(ENDED))
        with self._tx() as conn:
            return [_submission(row) for row in conn.execute(query).mappings()]

    def open_submissions(self) -> list[Submission]:
        """Every submission that has not ended, oldest first (the lifecycle's work list)."""
        t = self._t("submissions")
        with self._tx() as conn:
            rows = conn.execute(t.select().where(t.c.state.not_in(ENDED)).order_by(t.c.created)).mappings()
            return [_submission(row) for row in rows]

    def update(self, submission_id: str, **values: Any) -> Submission:
        """Set columns of one submission (``details`` merged into the stored ones); an ended one stays ended."""
        t = self._t("submissions")
        with self._lock, self._tx() as conn:
            row = conn.execute(t.select().where(t.c.id == submission_id)).mappings().first()
            if row is None:
                raise NotFound(f"no submission {submission_id!r}.")
            if row["state"] in ENDED and values.get("state", row["state"]) != row["state"]:
                return _submission(row)
            out: dict[str, Any] = {"updated": time.time()}
            for key, value in values.items():
                if key == "details":
                    out[key] = json.dumps({**json.loads(row["details"]), **value})
                elif key in ("job_ids", "request", "source"):
                    out[key] = json.dumps(value)
                else:
                    out[key] = value
            conn.execute(t.update().where(t.c.id == submission_id).values(**out))
        return self.get(submission_id)

    def counts(self) -> dict[str, int]:
        """Submissions per state (for /metrics)."""
        from sqlalchemy import func, select

        t = self._t("submissions")
        with self._tx() as conn:
            rows = conn.execute(select(t.c.state, func.count()).group_by(t.c.state)).all()
        return {str(state): int(n) for state, n in rows}

    def ping(self) -> None:
        from sqlalchemy import text

        with self._tx() as conn:
            conn.execute(text("SELECT 1"))

    # users' secrets --------------------------------------------------------------------------------------
    def put_secret(self, user: str, name: str, sealed: bytes) -> None:
        t = self._t("user_secrets")
        with self._lock, self._tx() as conn:
            conn.execute(t.delete().where(t.c.user == user, t.c.name == name))
            conn.execute(t.insert().values(user=user, name=name, sealed=sealed.hex(), created=time.time()))

    def secrets_of(self, user: str) -> dict[str, tuple[bytes, float]]:
        """name -> (sealed value, when it was stored)."""
        t = self._t("user_secrets")
        with self._tx() as conn:
            rows = conn.execute(t.select().where(t.c.user == user).order_by(t.c.name)).mappings()
            return {str(r["name"]): (bytes.fromhex(r["sealed"]), float(r["created"])) for r in rows}

    def delete_secret(self, user: str, name: str) -> None:
        t = self._t("user_secrets")
        with self._tx() as conn:
            gone = conn.execute(t.delete().where(t.c.user == user, t.c.name == name)).rowcount
        if not gone:
            raise NotFound(f"you have no secret {name!r}.")

    # job credentials -------------------------------------------------------------------------------------
    def add_credential(self, jti: str, submission_id: str, user: str, expires: float) -> None:
        t = self._t("job_credentials")
        with self._tx() as conn:
            conn.execute(t.insert().values(jti=jti, submission_id=submission_id, user=user, expires=expires,
                                           revoked=False))

    def credential_valid(self, jti: str, submission_id: str) -> bool:
        t = self._t("job_credentials")
        with self._tx() as conn:
            row = conn.execute(t.select().where(t.c.jti == jti)).mappings().first()
        return (row is not None and not row["revoked"] and row["submission_id"] == submission_id
                and float(row["expires"]) > time.time())

    def revoke_credentials(self, submission_id: str) -> int:
        t = self._t("job_credentials")
        with self._tx() as conn:
            return int(conn.execute(t.update().where(t.c.submission_id == submission_id, t.c.revoked.is_(False))
                                    .values(revoked=True)).rowcount)


def _submission(row: Any) -> Submission:
    return Submission(
        id=row["id"], user=row["user"], kind=row["kind"], state=row["state"], request=json.loads(row["request"]),
        source=json.loads(row["source"]), created=float(row["created"]), updated=float(row["updated"]),
        message=row["message"] or "", run_id=row["run_id"], experiment_id=row["experiment_id"],
        job_ids=list(json.loads(row["job_ids"] or "[]")), details=json.loads(row["details"] or "{}"),
        cancel_requested=bool(row["cancel_requested"]),
    )
