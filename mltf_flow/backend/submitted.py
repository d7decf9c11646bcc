"""``SlurmSubmittedRun``: what ``mlflow.projects.run(..., backend="mltf")`` returns.

* ``get_status()`` -> an MLflow run status string (``SCHEDULED`` while SLURM lists the job as pending,
  ``RUNNING``, then the run's final ``FINISHED`` / ``FAILED`` / ``KILLED``);
* ``wait()`` polls with backoff (``poll_interval`` doubling by 1.5 up to ``max_poll_interval``, back to the
  start whenever the state changes) and returns True only for a run that ended FINISHED with
  ``mltf.complete=true`` (exit code 0, as the job's wrapper recorded). Between two looks at SLURM it watches
  the job's record (``status.json``: a ``stat`` every 20 ms after a change, slowing down to one a second):
  a wrapper that recorded its run FINISHED on MLflow ends the wait at once, without waiting for SLURM to
  report the job over (the process exit, the job's end in the controller, the next poll: 0.1-0.3 s a job,
  more with a longer poll interval);
* ``cancel()`` runs ``scancel``, waits until SLURM has ended the job and marks the run KILLED.

States come from :mod:`mltf_flow.slurm.query` (batched across every run this process watches). While the
job is pending or running, changes of its SLURM state and reason are kept on the run
(``mltf.slurm.state``, ``mltf.slurm.reason``: ``PENDING`` / ``Resources``). Once the job is over, or has
left every view SLURM offers, the run is *reconciled*: the wrapper normally set its final status itself;
if it could not (the job was killed with SIGKILL, never started, or the tracking server was down), the
final status comes from the wrapper's record, else from SLURM's final state, and the reason is written on
the run. Nothing here raises because SLURM forgot a job. A job whose wrapper submitted the next segment of a
training that stopped for the time limit (:mod:`mltf_flow.backend.segments`) is not the end: the run's
``mltf.slurm_job_ids`` names the job after it, which is watched from then on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from mlflow.projects.submitted_run import SubmittedRun

from mltf_flow.backend.record import ENDED, REQUEUED, JobRecord, read_record
from mltf_flow.console import use_console
from mltf_flow.errors import ConfigError, SlurmUnavailable
from mltf_flow.slurm.query import monitor
from mltf_flow.slurm.states import FAILED, FINISHED, KILLED, RUNNING, SCHEDULED, TERMINAL_RUN_STATUSES, JobState
from mltf_flow.tags import (
    TAG_COMPLETE,
    TAG_ERROR,
    TAG_EXIT_CODE,
    TAG_SLURM_CANCELLED_BY,
    TAG_SLURM_JOB_DIR,
    TAG_SLURM_JOB_IDS,
    TAG_SLURM_REASON,
    TAG_SLURM_STATE,
)

_log = logging.getLogger(__name__)

#: A state SLURM may requeue from (preemption, node failure) is final after this long, or when the job is gone.
REQUEUE_GRACE_S = 60.0
#: How long ``cancel()`` waits for SLURM to end the job (its KillWait is 30 s by default).
CANCEL_TIMEOUT_S = 120.0
#: How often ``wait()`` looks at the job's record between polls of SLURM (one ``stat``; the file is read when
#: it changed or the job's state did (a short job ends soon after it starts), slowing down by 1.2 a look to
#: RECORD_POLL_S[1] s or the poll interval (a long job's end need not be seen within milliseconds).
RECORD_POLL_S = (0.02, 1.0)


class SlurmSubmittedRun(SubmittedRun):
    """A submitted ``mlflow run --backend mltf`` job (see the module docstring). Not thread-safe, like
    every ``SubmittedRun``."""

    def __init__(self, run_id: str, job_id: str, job_dir: str | Path, tracking_uri: str, *,
                 poll_interval: float = 2.0, max_poll_interval: float = 30.0) -> None:
        super().__init__()
        use_console()
        self._run_id = run_id
        self.job_id = job_id
        self.job_dir = Path(job_dir)
        self.tracking_uri = tracking_uri
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self._client: Any = None
        self._seen: tuple[str, str | None] | None = None
        self._requeueable_since: float | None = None
        self._final: str | None = None
        #: The run as MLflow had it when the job's record ended the wait (see ``_recorded_success``).
        self._final_run: Any = None
        self._record_seen: tuple[int, int, int] | None = None
        self._record_poll = RECORD_POLL_S[0]
        self._cancelled = False
        monitor().watch([job_id])

    @classmethod
    def from_run(cls, run_id: str, tracking_uri: str, **kwargs: Any) -> SlurmSubmittedRun:
        """The submitted job of an existing run (e.g. one the ``mlflow run`` CLI submitted and left)."""
        from mlflow.tracking import MlflowClient

        tags = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.tags
        job_ids = [j for j in tags.get(TAG_SLURM_JOB_IDS, "").split(",") if j]
        if not job_ids or TAG_SLURM_JOB_DIR not in tags:
            raise ConfigError(f"MLflow run {run_id} was not submitted by `mlflow run --backend mltf` "
                              "(it has no mltf.slurm_job_ids / mltf.slurm.job_dir tags).")
        return cls(run_id, job_ids[-1], tags[TAG_SLURM_JOB_DIR], tracking_uri, **kwargs)

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # -- SubmittedRun ---------------------------------------------------------------------------------------
    def get_status(self) -> str:
        if self._final is not None:
            return self._final
        status = self._step(max_age=self.poll_interval / 2)
        return status if status is not None else str(self.client.get_run(self._run_id).info.status)

    def wait(self) -> bool:
        interval = self.poll_interval
        while self._final is None:
            before = self._seen
            self._step(max_age=0.0)
            if self._final is not None:
                break
            if self._seen != before:  # e.g. the job started: its end may be near, look at its record often again
                interval, self._record_poll = self.poll_interval, RECORD_POLL_S[0]
            else:
                interval = min(interval * 1.5, self.max_poll_interval)
            self._sleep_watching_record(interval)
        return self.succeeded()

    def _sleep_watching_record(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the job's record shows the run FINISHED meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._recorded_success():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(self._record_poll, left))
            self._record_poll = min(self._record_poll * 1.2, RECORD_POLL_S[1], self.poll_interval)

    def cancel(self) -> None:
        from mltf_flow.slurm.sbatch import scancel

        if self._final is not None:
            return
        self._cancelled = True
        scancel([self.job_id])
        cancelled = {self.job_id}
        self.client.set_tag(self._run_id, TAG_SLURM_CANCELLED_BY,
                            f"SubmittedRun.cancel() in pid {os.getpid()} on {socket.gethostname()}")
        deadline = time.monotonic() + CANCEL_TIMEOUT_S
        while self._final is None and time.monotonic() < deadline:
            self._step(max_age=0.0)
            if self.job_id not in cancelled:  # the job had just submitted its next segment: that one too
                scancel([self.job_id])
                cancelled.add(self.job_id)
            if self._final is None:
                time.sleep(0.5)
        if self._final is None:  # SLURM still lists it after the grace: record what was done anyway
            self.reconcile(None, note=f"scancel sent; SLURM still listed the job after {CANCEL_TIMEOUT_S:.0f} s")

    # -- results ----------------------------------------------------------------------------------------------
    def succeeded(self) -> bool:
        run = self._final_run if self._final_run is not None else self.client.get_run(self._run_id)
        return bool(run.info.status == FINISHED and run.data.tags.get(TAG_COMPLETE) == "true")

    def _recorded_success(self) -> bool:
        """Whether this job's wrapper recorded its run FINISHED on MLflow (its record: phase ``ended``,
        ``tracked``); the run is then final. Other outcomes wait for SLURM, whose final word (e.g.
        OUT_OF_MEMORY where the wrapper saw a SIGKILL) the run keeps (:meth:`reconcile`)."""
        if self._final is not None:
            return True
        path = self.job_dir / "status.json"
        try:
            info = path.stat()
        except OSError:
            return False
        seen = (info.st_ino, info.st_mtime_ns, info.st_size)  # written by os.replace: a new file each time
        if seen == self._record_seen:
            return False
        self._record_seen, self._record_poll = seen, RECORD_POLL_S[0]
        record = read_record(path)
        if record is None or record.job_id != self.job_id or record.phase != ENDED or not record.tracked \
                or record.status != FINISHED:
            return False
        try:
            run = self.client.get_run(self._run_id)
        except Exception as exc:  # the tracking server is down: SLURM's view decides, as without a record
            _log.warning(f"cannot read run {self._run_id}: {exc}")
            return False
        if run.info.status not in TERMINAL_RUN_STATUSES:  # the record is ahead of what MLflow shows: poll on
            return False
        monitor().unwatch([self.job_id])
        self._final, self._final_run = str(run.info.status), run
        return True

    def _step(self, max_age: float) -> str | None:
        """One look at the job; returns the run status it implies (None when SLURM could not be asked)."""
        if self._recorded_success():
            return self._final
        try:
            state = monitor().states([self.job_id], max_age=max_age)[self.job_id]
        except SlurmUnavailable as exc:
            _log.warning(f"cannot ask SLURM about job {self.job_id} ({exc}); trying again")
            return None
        if state is None or (state.terminal and not state.info.requeueable):
            following = self._next_segment()
            if following is not None:
                return following
        if state is None:
            return self.reconcile(None)
        if not state.terminal:
            self._requeueable_since = None
            self._observe(state)
            return state.run_status
        if state.info.requeueable:
            # A preempted or node-failed job may be requeued: final once the state lasts or the job is gone.
            self._requeueable_since = self._requeueable_since or time.monotonic()
            if time.monotonic() - self._requeueable_since < REQUEUE_GRACE_S:
                self._observe(state)
                return RUNNING
        return self.reconcile(state)

    def _next_segment(self) -> str | None:
        """Watch the job that continues this one, if its wrapper submitted one; returns the run status then."""
        try:
            tags = self.client.get_run(self._run_id).data.tags
        except Exception as exc:  # the tracking server is down: decide on a later look
            _log.warning(f"cannot read run {self._run_id}: {exc}")
            return RUNNING
        jobs = [j for j in tags.get(TAG_SLURM_JOB_IDS, "").split(",") if j]
        if self.job_id not in jobs or jobs[-1] == self.job_id:
            return None
        following = jobs[jobs.index(self.job_id) + 1]
        _log.info(f"job {self.job_id} stopped for the time limit; job {following} continues run {self._run_id}")
        monitor().unwatch([self.job_id])
        monitor().watch([following])
        self.job_id, self._seen = following, None
        return SCHEDULED

    def _observe(self, state: JobState) -> None:
        key = (state.state, state.reason)
        if key == self._seen:
            return
        self._seen = key
        try:
            self.client.set_tag(self._run_id, TAG_SLURM_STATE, state.state)
            if _real_reason(state.reason):
                self.client.set_tag(self._run_id, TAG_SLURM_REASON, str(state.reason))
            elif TAG_SLURM_REASON in self.client.get_run(self._run_id).data.tags:  # a pending reason is over
                self.client.delete_tag(self._run_id, TAG_SLURM_REASON)
        except Exception as exc:  # the tracking server is down: keep polling, the job does not care
            _log.warning(f"cannot tag run {self._run_id}: {exc}")

    def reconcile(self, state: JobState | None, note: str | None = None) -> str:
        """Make the run's status final (see the module docstring); returns it."""
        from mlflow.entities import RunTag

        record = read_record(self.job_dir / "status.json")
        run = self.client.get_run(self._run_id)
        tags: dict[str, str] = {}
        if state is not None:
            # SLURM's own final word (e.g. OUT_OF_MEMORY where the wrapper only saw a SIGKILL) is kept.
            tags[TAG_SLURM_STATE] = state.state
            if _real_reason(state.reason):
                tags[TAG_SLURM_REASON] = str(state.reason)
        status = str(run.info.status)
        if status not in TERMINAL_RUN_STATUSES:
            status, more = self._decide(state, record, note)
            tags = {**more, **tags} if state is not None else {**tags, **more}
            self._upload_log()
        if tags:
            self.client.log_batch(self._run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if status != run.info.status:
            self.client.set_terminated(self._run_id, status)
        monitor().unwatch([self.job_id])
        self._final = status
        return status

    def _decide(self, state: JobState | None, record: JobRecord | None, note: str | None) -> tuple[str, dict[str, str]]:
        """The final status of a run its wrapper did not end, and the tags that say why."""
        if record is not None and record.phase == ENDED and record.status:
            tags = {TAG_EXIT_CODE: str(record.exit_code)}
            if record.slurm_state:
                tags[TAG_SLURM_STATE] = record.slurm_state
            if _real_reason(record.reason):
                tags[TAG_SLURM_REASON] = str(record.reason)
            if record.status == FINISHED:
                tags[TAG_COMPLETE] = "true"
            else:
                tags[TAG_ERROR] = f"{record.slurm_state}: {record.reason} (from the job's record)"
            return record.status, tags
        where = f"job {self.job_id}"
        if self._cancelled:
            return KILLED, {TAG_ERROR: note or f"{where} was cancelled (SubmittedRun.cancel)",
                            TAG_SLURM_REASON: "cancelled by SubmittedRun.cancel()"}
        if state is not None:
            status = state.run_status if state.run_status != FINISHED else FAILED
            error = f"{where} ended {state.describe()}" + (
                "" if record is None else "; its wrapper did not finish (killed before it could record)")
            tags = {TAG_ERROR: error}
            if state.exit_code is not None:
                tags[TAG_EXIT_CODE] = str(state.exit_code)
            return status, tags
        if record is not None and record.phase == REQUEUED:
            return FAILED, {TAG_SLURM_STATE: "UNKNOWN", TAG_SLURM_REASON: "requeued, never ran again",
                            TAG_ERROR: f"{where} was requeued and then left SLURM's views without running again."}
        if record is not None:  # started, never finished, and SLURM forgot it
            return FAILED, {TAG_SLURM_STATE: "UNKNOWN", TAG_SLURM_REASON: "wrapper did not finish",
                            TAG_ERROR: f"{where} ended without its wrapper finishing (killed with SIGKILL, or its "
                            "node failed); SLURM no longer lists it."}
        return FAILED, {TAG_SLURM_STATE: "UNKNOWN", TAG_SLURM_REASON: "never started",
                        TAG_ERROR: note or f"{where} left SLURM's views without ever starting (no record in "
                        f"{self.job_dir}): it failed before the wrapper ran, or SLURM lost it."}

    def _upload_log(self) -> None:
        log = self.job_dir / f"slurm-{self.job_id}.out"
        if not log.is_file():
            return
        try:
            names = {Path(a.path).name for a in self.client.list_artifacts(self._run_id, "mltf")}
            if log.name not in names:
                self.client.log_artifact(self._run_id, str(log), "mltf")
        except Exception as exc:
            _log.warning(f"could not upload {log}: {exc}")


def _real_reason(reason: str | None) -> bool:
    """SLURM says "None" when a job waits for nothing: no reason, not a tag with the word None."""
    return bool(reason) and reason != "None"
