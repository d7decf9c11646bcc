"""A submission from ``accepted`` to its end, and the gateway's recovery after a restart.

::

    accepted ──prepare hooks──> staging ──hooks' wait──> submitting ──sbatch──> queued ──> running
        │                          │                         │                       └──> finished | failed
        └──────── failed (bad input: answered 400) ──────────┴── failed (rule STUCK, SLURM refused) | cancelled

Every transition is written to the database before the next step starts, and every step can be done again:
the gateway can be killed at any moment (SIGKILL) and, restarted, goes on with each submission from the state
it finds: hooks run again (a Rucio rule is found, not created twice); a submission found ``submitting``
first looks for the run it created (by its tag) and the job it submitted (by its name in ``squeue``, by the
marker the job wrote, by the run's tags) and submits only when there is none. So no accepted submission is
lost and none is submitted twice.

One thread (:meth:`Lifecycle.run_forever`) walks the open submissions every ``poll_interval``; a hook's
``wait`` runs in a thread of its own, so a long staging never holds up the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.errors import ConfigError, MltfFlowError, RequestRejected
from mltf_flow.gateway import pipeline_jobs, project_jobs
from mltf_flow.gateway.hooks import Cancelled, HookContext, PreSubmitHook
from mltf_flow.phases import GATEWAY_JOB_SUBMITTED, reached

if TYPE_CHECKING:
    from mltf_flow.gateway.job_credentials import JobCredentials
    from mltf_flow.gateway.settings import GatewaySettings
    from mltf_flow.gateway.store import Store, Submission
    from mltf_flow.gateway.user_secrets import SecretBox

_log = logging.getLogger(__name__)


@dataclass
class Lifecycle:
    settings: GatewaySettings
    store: Store
    credentials: JobCredentials
    box: SecretBox
    hooks: list[PreSubmitHook]

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._waits: dict[str, threading.Thread] = {}
        self._runs: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._client: Any = None
        # The loop, a new submission's request and a cancel request may act on one submission at once (and
        # SubmittedRun is not thread-safe): each holds this while it acts, and reads the row again under it.
        self.lock = threading.RLock()

    # -- the loop ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="mltf-gateway-lifecycle", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def run_forever(self) -> None:
        while not self._stop.is_set():
            for sub in self.store.open_submissions():
                try:
                    self.advance(sub)
                except Exception as exc:  # one submission's trouble must not stop the others'
                    _log.exception(f"submission {sub.id}: {exc}")
            self._stop.wait(self.settings.poll_interval)

    @property
    def mlflow(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.settings.mlflow_upstream)
        return self._client

    def project_dir(self, sub: Submission) -> Path:
        return self.settings.state_path / "submissions" / sub.id / "project"

    def work_dir(self, sub: Submission) -> Path:
        return self.settings.state_path / "submissions" / sub.id

    def advance(self, sub: Submission) -> None:
        """One step of ``sub`` from the state it is in."""
        with self.lock:
            sub = self.store.get(sub.id)
            if not sub.ended:
                self._advance(sub)

    def _advance(self, sub: Submission) -> None:
        if sub.cancel_requested and sub.state in ("accepted", "submitting"):
            self._end(sub, "cancelled", "cancelled before it was submitted")
        elif sub.state == "accepted":
            self.prepare(sub)
        elif sub.state == "staging":
            self._ensure_wait(sub)
        elif sub.state == "submitting":
            self.submit(sub)
        elif sub.state in ("queued", "running"):
            self.watch(sub)

    # -- accepted -> staging ------------------------------------------------------------------------------
    def _context(self, sub: Submission) -> HookContext:
        def note(message: str, details: Mapping[str, Any]) -> None:
            self.store.update(sub.id, message=message, details=dict(details))

        def is_cancelled() -> bool:
            return self.store.get(sub.id).cancel_requested

        return HookContext(submission=sub, params=dict(sub.details.get("params", sub.request.get("params") or {})),
                           work_dir=self.work_dir(sub), note=note, is_cancelled=is_cancelled)

    def prepare(self, sub: Submission) -> Submission:
        """The hooks' quick halves; a bad request fails the submission (its message is the answer)."""
        try:
            self._ensure_project(sub)
            if sub.kind == "project" and not sub.run_id:
                # The run exists from the start (SCHEDULED while inputs stage): `mlflow run` tags it at once.
                run_id, experiment = project_jobs.own_run(self.mlflow, sub, self.settings)
                sub = self.store.update(sub.id, run_id=run_id, experiment_id=experiment)
            for hook in self.hooks:
                hook.prepare(self._context(sub))
        except (ConfigError, RequestRejected) as exc:
            return self._end(sub, "failed", str(exc))
        return self.store.update(sub.id, state="staging" if self.hooks else "submitting")

    def _ensure_project(self, sub: Submission) -> None:
        """The project's files, fetched again when the gateway stopped between accepting and moving them."""
        import shutil
        import tempfile

        from mltf_flow.gateway.intake import Source, fetch_project

        target = self.project_dir(sub)
        if target.is_dir():
            return
        with tempfile.TemporaryDirectory(dir=self.settings.state_path / "tmp") as tmp:
            project = fetch_project(self, Source(**sub.source), Path(tmp) / "project")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(project), str(target))

    # -- staging -> submitting ------------------------------------------------------------------------------
    def _ensure_wait(self, sub: Submission) -> None:
        thread = self._waits.get(sub.id)
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=self._wait, args=(sub,), name=f"staging-{sub.id}", daemon=True)
            self._waits[sub.id] = thread
            thread.start()

    def _wait(self, sub: Submission) -> None:
        ctx = self._context(sub)
        try:
            for hook in self.hooks:
                ctx.params.update(hook.wait(ctx))
        except Cancelled:
            self._end(self.store.get(sub.id), "cancelled", "cancelled while staging")
            return
        except MltfFlowError as exc:
            self._end(self.store.get(sub.id), "failed", str(exc))
            return
        except Exception as exc:
            _log.exception(f"submission {sub.id}: a hook failed")
            self._end(self.store.get(sub.id), "failed", f"a pre-submit hook failed: {type(exc).__name__}: {exc}")
            return
        self.store.update(sub.id, state="submitting", message="inputs ready; submitting",
                          details={"params": ctx.params})

    # -- submitting -> queued -------------------------------------------------------------------------------
    def _job_env(self, sub: Submission) -> dict[str, str]:
        """The job's share of sbatch's environment: the user's secrets and the submission's credential."""
        held = self.store.secrets_of(sub.user)
        env = {name: self.box.open(sub.user, name, sealed) for name, (sealed, _) in held.items()}
        env["MLFLOW_TRACKING_TOKEN"] = self.credentials.mint(sub.id, sub.user, self.settings.credential_lifetime)
        return env

    def submit(self, sub: Submission) -> Submission:
        """Submit ``sub``'s job unless a job of it exists already (see the module docstring)."""
        params = dict(sub.details.get("params", sub.request.get("params") or {}))
        try:
            if sub.kind == "project":
                job = self._submit_project(sub, params)
            else:
                found = project_jobs.find_job(sub.job_name, pipeline_jobs.job_dir(self.settings, sub))
                job = found or pipeline_jobs.submit_pipeline(sub, self.settings, self.project_dir(sub),
                                                             self._job_env(sub))
            reached(GATEWAY_JOB_SUBMITTED)
        except MltfFlowError as exc:
            return self._end(self.store.get(sub.id), "failed", str(exc))
        return self.store.update(sub.id, state="queued", job_ids=[job], message=f"submitted as SLURM job {job}")

    def _submit_project(self, sub: Submission, params: dict[str, Any]) -> str:
        from mltf_flow.tags import TAG_SLURM_JOB_DIR, TAG_SLURM_JOB_IDS

        if not sub.run_id:
            run_id, experiment = project_jobs.own_run(self.mlflow, sub, self.settings)
            sub = self.store.update(sub.id, run_id=run_id, experiment_id=experiment)
        assert sub.run_id
        if self.mlflow.get_run(sub.run_id).info.status != "SCHEDULED":  # ended (cancelled, failed) meanwhile
            raise RequestRejected(f"run {sub.run_id} is no longer SCHEDULED; nothing submitted.")
        job, by_backend = project_jobs.recorded_job(self.mlflow, sub.run_id)
        job = job or project_jobs.find_job(sub.job_name)
        if job is None:
            return project_jobs.submit_project(sub, self.settings, self.project_dir(sub), params, self._job_env(sub))
        if not by_backend:  # submitted by a gateway that stopped before the backend tagged the run
            job_dir = Path(self.settings.backend.get("job_dir") or self.settings.state_path / "jobs") / sub.run_id
            self.mlflow.set_tag(sub.run_id, TAG_SLURM_JOB_IDS, job)
            self.mlflow.set_tag(sub.run_id, TAG_SLURM_JOB_DIR, str(job_dir))
        return job

    # -- queued/running -> ended ----------------------------------------------------------------------------
    def watch(self, sub: Submission) -> Submission:
        if sub.kind == "project":
            return self._watch_project(sub)
        return self._watch_pipeline(sub)

    def _watch_project(self, sub: Submission) -> Submission:
        from mltf_flow.backend.submitted import SlurmSubmittedRun
        from mltf_flow.tags import TAG_ERROR

        assert sub.run_id
        run = self._runs.get(sub.id)
        if run is None:
            run = self._runs[sub.id] = SlurmSubmittedRun.from_run(sub.run_id, self.settings.mlflow_upstream)
        status = run.get_status()
        if status in ("RUNNING", "SCHEDULED"):
            state = "running" if status == "RUNNING" else "queued"
            job_ids = sorted({*sub.job_ids, run.job_id}, key=int)
            if state != sub.state or job_ids != sub.job_ids:
                return self.store.update(sub.id, state=state, job_ids=job_ids, message=f"SLURM job {run.job_id}")
            return sub
        self._runs.pop(sub.id, None)
        if status == "FINISHED" and run.succeeded():
            return self._end(sub, "finished", f"run {sub.run_id} finished")
        error = self.mlflow.get_run(sub.run_id).data.tags.get(TAG_ERROR, "")
        if status == "KILLED" and sub.cancel_requested:
            return self._end(sub, "cancelled", f"run {sub.run_id} KILLED")
        return self._end(sub, "failed", f"run {sub.run_id} {status}" + (f": {error}" if error else ""))

    def _watch_pipeline(self, sub: Submission) -> Submission:
        from mltf_flow.slurm.query import monitor

        job = sub.job_ids[-1]
        mon = monitor()
        mon.watch([job])
        state = mon.lookup([job]).get(job)
        if state is not None and not state.terminal:
            new = "running" if state.state == "RUNNING" else "queued"
            reason = f" ({state.reason})" if state.reason and state.reason not in ("None", "(null)") else ""
            message = f"SLURM job {job} {state.state}{reason}"
            return self.store.update(sub.id, state=new, message=message) if message != sub.message else sub
        rc = pipeline_jobs.exit_code(self.settings, sub, job)
        log = pipeline_jobs.log_path(self.settings, sub)
        if rc == 0:
            return self._end(sub, "finished", f"pipeline target {sub.request.get('target')!r} finished")
        if sub.cancel_requested:
            return self._end(sub, "cancelled", f"SLURM job {job} ended")
        how = f"exited with code {rc}" if rc is not None else \
            f"ended {state.state if state else 'without reporting'} before the pipeline did"
        return self._end(sub, "failed", f"the pipeline's driver job {job} {how}; its log: {log}")

    # -- the end ----------------------------------------------------------------------------------------------
    def _end(self, sub: Submission, state: str, message: str) -> Submission:
        """Record the end (once), revoke the submission's job credentials, list the runs it made."""
        runs = self._runs_of(sub)
        _log.info(f"submission {sub.id} of {sub.user} {state}: {message}")
        ended = self.store.update(sub.id, state=state, message=message, details={"runs": runs} if runs else {})
        self.credentials.store.revoke_credentials(sub.id)
        if sub.run_id and sub.state in ("accepted", "staging", "submitting"):
            self._close_run(sub.run_id, state, message)
        return ended

    def _close_run(self, run_id: str, state: str, message: str) -> None:
        """End a run no job took over (failed staging, cancelled before submission)."""
        from mltf_flow.tags import TAG_ERROR

        try:
            if self.mlflow.get_run(run_id).info.status == "SCHEDULED":
                self.mlflow.set_tag(run_id, TAG_ERROR, message[:5000])
                self.mlflow.set_terminated(run_id, "KILLED" if state == "cancelled" else "FAILED")
        except Exception as exc:  # MLflow away: the submission's own state says it all
            _log.warning(f"run {run_id} could not be ended: {exc}")

    def _runs_of(self, sub: Submission) -> dict[str, str]:
        """The runs the submission's jobs made: run id -> what it is (the step's name, ``pipeline`` for a
        pipeline's parent run, the entry point for a project)."""
        from mltf_flow.tags import TAG_GATEWAY_SUBMISSION, TAG_ROLE, TAG_STEP

        if sub.state in ("accepted", "staging"):
            return {}
        try:
            found = self.mlflow.search_runs(
                [e.experiment_id for e in self.mlflow.search_experiments()],
                filter_string=f"tags.`{TAG_GATEWAY_SUBMISSION}` = '{sub.id}'", max_results=500)
        except Exception as exc:  # MLflow away: the submission still ends
            _log.warning(f"submission {sub.id}: its runs could not be listed: {exc}")
            return {}
        return {str(r.info.run_id): str(r.data.tags.get(TAG_STEP) or r.data.tags.get(TAG_ROLE)
                                        or sub.request.get("entry_point") or "run") for r in found}

    # -- cancel ------------------------------------------------------------------------------------------------
    def cancel(self, sub: Submission) -> Submission:
        """Ask ``sub`` to stop: a job is scancelled now (its run KILLED), staging stops at its next poll, a
        submission not yet submitted ends here or at the loop's next look."""
        from mltf_flow.slurm.sbatch import scancel

        with self.lock:
            sub = self.store.update(sub.id, cancel_requested=True)
            if sub.state == "accepted":
                return self._end(sub, "cancelled", "cancelled before it was submitted")
        if sub.state in ("queued", "running"):
            if sub.kind == "project":
                from mltf_flow.backend.submitted import SlurmSubmittedRun

                assert sub.run_id
                # An object of its own, outside the lock (cancel() waits for SLURM): the loop's keeps watching.
                SlurmSubmittedRun.from_run(sub.run_id, self.settings.mlflow_upstream).cancel()
            else:
                scancel(sub.job_ids)
            with self.lock:
                current = self.store.get(sub.id)
                return current if current.ended else self.watch(current)
        return self.store.get(sub.id)
