"""MLflow run lifecycle for pipeline steps: experiments, parent runs, step runs, finishing, reaping.

This module owns every *write* to the tracking store (reads for completeness checks live in
:mod:`mltf_flow.run_index`). It imports mlflow lazily: it is only used when a step actually runs.

Lifecycle of a step run (DESIGN.md "The step contract")::

    create (RUNNING, lineage tags, params) -> command runs with MLFLOW_RUN_ID -> outputs verified
        -> tag mltf.complete=true, mltf.exit_code=0, FINISHED      (success)
        -> tag mltf.exit_code=N, FAILED                            (failure)
        -> KILLED + mltf.reaped=true by a later attempt            (its owner's lease expired)

Runs record their owner (host, boot id, pid and its start time) and carry a lease the owner renews
(:mod:`mltf_flow.lease`): a RUNNING run whose lease expired, or whose owner is provably gone from this
machine, is *stale* and is reaped; any other RUNNING run holds its key, and a second invocation that
needs the key waits for it.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow import phases
from mltf_flow.config import Settings
from mltf_flow.errors import TrackingError
from mltf_flow.file_lock import file_lock
from mltf_flow.invocation import mark_parent_made
from mltf_flow.lease import is_stale, lease_tags, process_identity
from mltf_flow.redaction import redact, split_userinfo, strip_credentials
from mltf_flow.tags import (
    EXPERIMENT_KIND_TRAINING,
    MLFLOW_EXPERIMENT_KIND,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
    TAG_ATTEMPT,
    TAG_CACHE_KEY,
    TAG_CHECKPOINT_EPOCH,
    TAG_CHECKPOINT_LATEST,
    TAG_COMMAND_PID,
    TAG_COMPLETE,
    TAG_ERROR,
    TAG_EXIT_CODE,
    TAG_FAILED_STEPS,
    TAG_HOST,
    TAG_INVOCATION_ID,
    TAG_KEY_VERSION,
    TAG_PID,
    TAG_PIPELINE,
    TAG_PREVIOUS_PARENT_RUN_IDS,
    TAG_REAPED,
    TAG_RESUMED_FROM_EPOCH,
    TAG_ROLE,
    TAG_SLURM_JOB_DIR,
    TAG_SLURM_JOB_IDS,
    TAG_STEP,
    TAG_STEPS_RUN,
)
from mltf_flow.tracking_rest import TrackingRest, is_server, needs_mlflow_client

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_log = logging.getLogger(__name__)


def _main_pid() -> int:
    """The pid of this invocation's main (DAG-building) process (mltf_flow.clusters.session)."""
    value = os.environ.get("MLTF_MAIN_PID", "")
    return int(value) if value.isdigit() else os.getpid()


#: Whether the SLURM job behind a RUNNING run that ``mlflow run --backend mltf`` submitted (a run tagged
#: ``mltf.slurm.job_dir``) is still queued or running, given (run id, tracking URI); a job that is over gets
#: its run's real final status on the way. The backend provides it
#: (:func:`mltf_flow.backend.liveness.submitted_job_alive`); this module sits below the backend and does
#: not import it: the caller of :meth:`Tracker.reap_stale` passes it in.
JobLiveness = Callable[[str, str], bool]


@dataclass(frozen=True)
class Holder:
    """A run of another invocation that holds a key: it runs (or settles) the step we need."""

    run_id: str
    #: Who runs it, for messages ("pid 4242 on node-a", "SLURM job 17").
    owner: str


class Tracker:
    """Writes runs for one pipeline invocation to the configured tracking store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: MlflowClient | None = None
        #: The start time of each run this tracker created, as the store recorded it (a claim compares them).
        self._started: dict[str, int] = {}
        #: A server's REST API for the calls made per step run (MLflow's client spends 3-10 ms of CPU a call on
        #: headers, telemetry, entities); None for a local store or where only MLflow's client can sign requests.
        self.rest = TrackingRest(settings.tracking_uri) if is_server(settings.tracking_uri) \
            and not needs_mlflow_client() else None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            # Printing "View run ..." costs a request per run and clutters step logs.
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            from mlflow.tracking import MlflowClient

            if self.settings.is_local_store:
                # The first use of a fresh sqlite store runs MLflow's migrations; two forked Luigi
                # workers doing that at once collide ("duplicate column name"). One at a time.
                # MLflow says "Creating initial MLflow database tables..." at INFO: not news to a user.
                logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
                with file_lock(self.settings.work_dir / "locks" / "store-init.lock"):
                    client = MlflowClient(tracking_uri=self.settings.tracking_uri)
                    client.search_experiments(max_results=1)
            else:
                from mltf_flow.tracking_server import check_server

                check_server(self.settings.tracking_uri)  # MLflow's own retries are long and silent
                client = MlflowClient(tracking_uri=self.settings.tracking_uri)
            self._client = client
        return self._client

    # -- experiments and parent runs ----------------------------------------------------------
    def ensure_experiment(self, name: str) -> str:
        """The id of experiment ``name``, created (with artifacts under the work dir) if missing."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage != "active":
                raise TrackingError(
                    f"experiment {name!r} is deleted in {self.settings.tracking_uri}. Restore it "
                    f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or choose another name."
                )
            if MLFLOW_EXPERIMENT_KIND not in exp.tags:  # a kind the user chose stays
                self.client.set_experiment_tag(exp.experiment_id, MLFLOW_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
            return str(exp.experiment_id)
        location = None
        if self.settings.is_local_store:
            # Without this MLflow would put artifacts in ./mlruns of whatever directory we run in.
            location = (self.settings.artifact_root / name).as_uri()
        try:
            # The MLflow UI opens an experiment without a kind on its GenAI overview; ours hold training runs.
            return str(self.client.create_experiment(name, artifact_location=location,
                                                     tags={MLFLOW_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING}))
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)  # created concurrently by another worker
            if exp is None:
                raise
            return str(exp.experiment_id)

    def parent_run(self, experiment_id: str, pipeline: str, invocation_id: str) -> str:
        """The parent run of this pipeline invocation, created on first use. Several Luigi worker processes
        may ask at once; a file lock makes exactly one create it."""
        with file_lock(self.settings.work_dir / "locks" / f"parent-{invocation_id}.lock"):
            found = self.client.search_runs(
                [experiment_id],
                f"tags.`{TAG_INVOCATION_ID}` = '{invocation_id}' and tags.`{TAG_ROLE}` = 'pipeline'",
                max_results=1,
            )
            mark_parent_made(self.settings.work_dir, invocation_id)
            if found:
                run_id = str(found[0].info.run_id)
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            self.reap_stale_parents(experiment_id, pipeline)
            # The invocation's main process owns the parent (a forked task process that creates it may
            # end long before the invocation does).
            run = self.client.create_run(
                experiment_id,
                run_name=f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}",
                tags={
                    TAG_INVOCATION_ID: invocation_id,
                    TAG_PIPELINE: pipeline,
                    TAG_ROLE: "pipeline",
                    **process_identity(_main_pid()),
                    **lease_tags(self.settings.lease_seconds),
                    MLFLOW_USER: getpass.getuser(),
                    MLFLOW_SOURCE_TYPE: "PROJECT",
                },
            )
            phases.reached(phases.PARENT_CREATED)
            return str(run.info.run_id)

    def invocation_parents(self, invocation_id: str) -> list[str]:
        """The parent runs of ``invocation_id`` (one per pipeline it ran; a schedule's fire made its own) in
        every active experiment, their status left as it is (unlike :meth:`parent_run`)."""
        experiments = [e.experiment_id for e in self.client.search_experiments(max_results=1000)]
        if not experiments:
            return []
        runs = self.client.search_runs(
            experiments, f"tags.`{TAG_INVOCATION_ID}` = '{invocation_id}' and tags.`{TAG_ROLE}` = 'pipeline'",
            max_results=100,
        )
        return [str(run.info.run_id) for run in runs]

    def failed_parent(self, pipeline: str, invocation_id: str) -> str:
        """A parent run for an invocation of ``pipeline`` that failed before it had one, ended FAILED at once:
        it holds what is said about the invocation (the failure report)."""
        run_id = self.parent_run(self.ensure_experiment(self.settings.experiment_for(pipeline)), pipeline,
                                 invocation_id)
        self.client.set_terminated(run_id, "FAILED")
        return run_id

    def run_place(self, run_id: str) -> tuple[str, str, dict[str, str]]:
        """(experiment id, experiment name, tags) of a run: where to find it and what it says about itself."""
        run = self.client.get_run(run_id)
        experiment_id = str(run.info.experiment_id)
        return experiment_id, str(self.client.get_experiment(experiment_id).name), dict(run.data.tags)

    def reap_stale_parents(self, experiment_id: str, pipeline: str) -> list[str]:
        """Mark RUNNING parent runs of ``pipeline`` whose invocation is gone (its main process was killed,
        e.g. SIGKILL, and could not end them; on another machine: its lease expired) as KILLED; return
        their ids."""
        reaped: list[str] = []
        for run in self.client.search_runs(
            [experiment_id], f"tags.`{TAG_ROLE}` = 'pipeline' and tags.`{TAG_PIPELINE}` = '{pipeline}' "
            "and attributes.status = 'RUNNING'", max_results=200,
        ):
            if is_stale(run.data.tags, run.info.start_time, self.settings.lease_seconds):
                self.client.set_tag(run.info.run_id, TAG_REAPED, "true")
                self.client.set_terminated(run.info.run_id, "KILLED")
                reaped.append(str(run.info.run_id))
        return reaped

    def settle_parent(self, parent_id: str, *, step: str, ok: bool) -> None:
        """Record a step's outcome on the parent run (no ``step``: nothing to record, only end it); it is
        FAILED once any step failed."""
        with file_lock(self.settings.work_dir / "locks" / f"parent-{parent_id}.lock"):
            tags = self.client.get_run(parent_id).data.tags
            failed = [s for s in tags.get(TAG_FAILED_STEPS, "").split(",") if s]
            done = [s for s in tags.get(TAG_STEPS_RUN, "").split(",") if s]
            if ok and step:  # no step: the invocation withdrew its claim (another one runs the step)
                done.append(step)
                self.client.set_tag(parent_id, TAG_STEPS_RUN, ",".join(done))
            elif not ok:
                failed.append(step)
                self.client.set_tag(parent_id, TAG_FAILED_STEPS, ",".join(failed))
            from mltf_flow.lineage_view import describe_parent

            describe_parent(self, parent_id)  # its name and description, now that the step is settled
            self.client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")

    # -- step runs ----------------------------------------------------------------------------
    def reap_stale(self, experiment: str, key: str, *, job_alive: JobLiveness) -> tuple[list[str], Holder | None]:
        """Reap the runs with this key whose owner is gone; return their ids and the run that still holds
        the key, if any (another invocation's step is running or settling it: see :mod:`mltf_flow.lease`).

        A RUNNING run that ``mlflow run --backend mltf`` submitted (tag ``mltf.slurm.job_dir``) is alive
        while ``job_alive`` says SLURM still runs its job. A FINISHED run that was never verified (the
        script's MLflow ended it, then its pipeline was killed before checking exit code and outputs) is
        KILLED, a checkpoint in it making the retry resume (see resumable_run), unless its owner still
        settles it.
        """
        from mltf_flow.run_index import run_index

        index = run_index(self.settings.tracking_uri)
        reaped: list[str] = []
        holder: Holder | None = None
        for ref in index.find_with_status(experiment, key, "RUNNING", "FINISHED"):  # one search
            status = ref.status
            run = self.client.get_run(ref.run_id)
            tags = run.data.tags
            if status == "FINISHED" and (tags.get(TAG_COMPLETE) == "true" or tags.get(TAG_SLURM_JOB_DIR)):
                continue  # verified, or the backend's (reconciled by its own wrapper)
            if tags.get(TAG_SLURM_JOB_DIR):
                # Over jobs get their real final status from job_alive (reconciled): neither reaped nor held.
                if job_alive(ref.run_id, self.settings.tracking_uri) and holder is None:
                    holder = Holder(ref.run_id, f"SLURM job {tags.get(TAG_SLURM_JOB_IDS)} "
                                    "(`mlflow run --backend mltf`)")
                continue
            if not is_stale(tags, run.info.start_time, self.settings.lease_seconds):
                if holder is None:
                    holder = Holder(ref.run_id, f"pid {tags.get(TAG_PID)} on {tags.get(TAG_HOST)}")
                continue
            error = ("the lease of its owner expired" if status == "RUNNING" else "ended FINISHED by its script "
                     "but never verified: the pipeline stopped before checking its exit code and outputs")
            self.set_tags(ref.run_id, {TAG_REAPED: "true", TAG_ERROR: error})
            self.client.set_terminated(ref.run_id, "KILLED")
            reaped.append(ref.run_id)
        return reaped, holder

    def earlier_claim(self, experiment_id: str, key: str, run_id: str) -> Holder | None:
        """A live run with this key created before ``run_id`` (by start time, then id): two invocations on
        different machines that created runs for one key at the same moment agree on which one goes on."""
        started = self._started.get(run_id)
        if started is None:  # a run reopened, or created by another tracker
            started = int(self.client.get_run(run_id).info.start_time or 0)
        for run in self.client.search_runs(
            [experiment_id], f"tags.`{TAG_CACHE_KEY}` = '{key}' and attributes.status = 'RUNNING'", max_results=50,
        ):
            info = run.info
            if info.run_id == run_id or is_stale(run.data.tags, info.start_time, self.settings.lease_seconds):
                continue
            if (info.start_time or 0, info.run_id) < (started, run_id):
                return Holder(str(info.run_id), f"pid {run.data.tags.get(TAG_PID)} on {run.data.tags.get(TAG_HOST)}")
        return None

    def withdraw(self, run_id: str, *, reopened: bool) -> None:
        """Give up a run this process created (deleted) or reopened (KILLED again, its checkpoints kept for
        the next attempt): another invocation claimed the key first."""
        if reopened:
            self.client.set_terminated(run_id, "KILLED")
        else:
            self.client.delete_run(run_id)

    def holder_outcome(self, holder: Holder) -> str | None:
        """How the run another invocation holds stands now: None while it still holds the key; "complete"
        when it ended with ``mltf.complete=true``; otherwise its status (FAILED, KILLED, a stale owner)."""
        run = self.client.get_run(holder.run_id)
        tags, status = run.data.tags, run.info.status
        if tags.get(TAG_COMPLETE) == "true" and status == "FINISHED":
            return "complete"
        if status in ("RUNNING", "FINISHED") and not tags.get(TAG_SLURM_JOB_DIR):
            return "stale" if is_stale(tags, run.info.start_time, self.settings.lease_seconds) else None
        if status == "RUNNING":  # a backend job: SLURM's state decides, checked by the next claim
            return None
        return str(status)

    def create_step_run(self, experiment_id: str, *, parent_id: str | None, run_name: str, tags: Mapping[str, str],
                        params: Mapping[str, Any], more_tags: Callable[[str], Mapping[str, str]] | None = None) -> str:
        """Create the step's run (RUNNING) with lineage tags and its parameters; ``more_tags`` (given the new
        run's id, e.g. its description) go in the request of the first parameters, or alone if they fail."""
        from mlflow.entities import Param, RunTag

        from mltf_flow.artifact_location import remember

        all_tags = {MLFLOW_USER: getpass.getuser(), **process_identity(), **lease_tags(self.settings.lease_seconds),
                    **tags}
        if parent_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
        run = self.client.create_run(experiment_id, run_name=run_name,
                                     tags={k: strip_credentials(v) for k, v in all_tags.items()})
        run_id = str(run.info.run_id)
        remember(run_id, str(run.info.artifact_uri or ""), self.settings.tracking_uri)  # no get before uploads
        if run.info.start_time is not None:  # no get when the claim is checked (earlier_claim)
            self._started[run_id] = int(run.info.start_time)
        items = [Param(k, v[:6000]) for k, v in sorted(redact(params).items())]
        try:
            extra = [RunTag(k, strip_credentials(v)) for k, v in (more_tags(run_id) if more_tags else {}).items()]
            if extra and not self._logged(run_id, params=items[:100], tags=extra):
                # A description is never worth failing a step: the parameters alone, as without one.
                _log.warning(f"warning: could not write the tags {[t.key for t in extra]} of MLflow run {run_id}")
                extra = []
            for start in range(100 if extra else 0, len(items), 100):  # MLflow caps a batch at 100 params
                self.client.log_batch(run_id, params=items[start : start + 100])
        except BaseException as exc:  # e.g. a parameter name MLflow rejects: the run must not stay RUNNING
            self.client.set_tag(run_id, TAG_ERROR, f"MLflow rejected the parameters: {exc}"[:5000])
            self.client.set_terminated(run_id, "FAILED")
            raise
        return run_id

    def _logged(self, run_id: str, **batch: Any) -> bool:
        try:
            self.client.log_batch(run_id, **batch)
        except Exception:
            return False
        return True

    def resumable_run(self, experiment_id: str, key: str) -> tuple[str, dict[str, str]] | None:
        """The newest FAILED or KILLED run with this key that holds a checkpoint: a retry continues it."""
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{TAG_CACHE_KEY}` = '{key}'",
            order_by=["attributes.start_time DESC"], max_results=20,
        )
        for run in runs:
            tags = dict(run.data.tags)
            resumable = TAG_CHECKPOINT_LATEST in tags and tags.get(TAG_COMPLETE) != "true"
            if run.info.status in ("FAILED", "KILLED") and resumable:
                return str(run.info.run_id), tags
        return None

    def reopen_run(self, run_id: str, previous: Mapping[str, str], *, parent_id: str | None,
                   tags: Mapping[str, str]) -> int:
        """Set a failed run RUNNING again for this process (a resumed attempt); return the attempt number."""
        attempt = int(previous.get(TAG_ATTEMPT, "1")) + 1
        for stale in (TAG_ERROR, TAG_EXIT_CODE, TAG_REAPED, TAG_COMMAND_PID):
            if stale in previous:
                self.client.delete_tag(run_id, stale)
        fresh = {**tags, **process_identity(), **lease_tags(self.settings.lease_seconds), TAG_ATTEMPT: str(attempt),
                 TAG_RESUMED_FROM_EPOCH: previous.get(TAG_CHECKPOINT_EPOCH, "")}
        if parent_id:
            fresh[MLFLOW_PARENT_RUN_ID] = parent_id
            parents = [p for p in previous.get(TAG_PREVIOUS_PARENT_RUN_IDS, "").split(",") if p]
            if previous.get(MLFLOW_PARENT_RUN_ID):
                parents.append(previous[MLFLOW_PARENT_RUN_ID])
            fresh[TAG_PREVIOUS_PARENT_RUN_IDS] = ",".join(parents)
        self.set_tags(run_id, fresh)
        self.client.update_run(run_id, status="RUNNING")
        return attempt

    def run_status(self, run_id: str) -> str:
        """The run's status now (the step's script may have ended it itself)."""
        if self.rest is not None:
            return str(self.rest.get_run(run_id)["info"]["status"])
        return str(self.client.get_run(run_id).info.status)

    def finish_step(self, run_id: str, *, ok: bool, exit_code: int | None, status: str | None = None,
                    tags: Mapping[str, str] | None = None) -> None:
        """Set the final status; ``mltf.complete=true`` only for a verified success. ``tags`` (e.g. a trial's
        state) go in the same request as the exit code."""
        final = {**(tags or {}), **({TAG_EXIT_CODE: str(exit_code)} if exit_code is not None else {})}
        if ok:
            final[TAG_COMPLETE] = "true"
        if final:  # one request (all the tags or none), before the status that makes the run count
            self.set_tags(run_id, final)
        if self.rest is not None:
            self.rest.terminate(run_id, status or ("FINISHED" if ok else "FAILED"))
        else:
            self.client.set_terminated(run_id, status or ("FINISHED" if ok else "FAILED"))

    def log_artifact(
        self, run_id: str, path: Path, artifact_path: str | None = None, name: str | None = None
    ) -> None:
        """Log a local file; ``name`` renames it in the run (e.g. every step log as ``step.log``)."""
        if name is None or name == path.name:
            self.client.log_artifact(run_id, str(path), artifact_path)
            return
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            renamed = Path(tmp) / name
            shutil.copyfile(path, renamed)
            self.client.log_artifact(run_id, str(renamed), artifact_path)

    def artifact_local_path(self, run_id: str, artifact_path: str, cache_dir: Path) -> Path:
        """A local path for an artifact of ``run_id`` (downloaded once into ``cache_dir``)."""
        import mlflow.artifacts

        target = cache_dir / run_id
        local = target / artifact_path
        if local.exists():
            return local
        target.mkdir(parents=True, exist_ok=True)
        got = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(target),
            tracking_uri=self.settings.tracking_uri,
        )
        return Path(got)

    def has_artifact(self, run_id: str, artifact_path: str) -> bool:
        """True when ``artifact_path`` was logged to the run and is not empty."""
        parent = os.path.dirname(artifact_path) or None
        for info in self.client.list_artifacts(run_id, parent):
            if info.path == artifact_path:
                return info.is_dir or bool(info.file_size)
        return False

    def has_model(self, experiment_id: str, run_id: str, name: str) -> bool:
        """True when a LoggedModel ``name`` was logged by this run (MLflow 3 keeps models apart)."""
        models = self.client.search_logged_models(
            experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        return any(m.name == name for m in models)

    def model_uri(self, run_id: str, name: str) -> str:
        """``models:/<model_id>`` of the LoggedModel ``name`` logged by ``run_id``."""
        run = self.client.get_run(run_id)
        models = self.client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        for model in models:
            if model.name == name:
                return f"models:/{model.model_id}"
        raise TrackingError(f"run {run_id} has no logged model named {name!r}.")

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        if self.rest is not None:
            self.rest.set_tags(run_id, {k: strip_credentials(v) for k, v in tags.items()})
            return
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, strip_credentials(v)) for k, v in tags.items()])


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the tracking server's UI; None for a sqlite store (``mltf-flow ui`` serves it)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    from mltf_flow.run_description import run_link

    return f"{split_userinfo(tracking_uri)[0].rstrip('/')}/{run_link(experiment_id, run_id)}"


def lineage_key_tags(key: str, step: str, pipeline: str) -> dict[str, str]:
    """The tags that let a run be found again by its cache key."""
    from mltf_flow.cache_key import KEY_VERSION

    return {TAG_CACHE_KEY: key, TAG_KEY_VERSION: str(KEY_VERSION), TAG_STEP: step, TAG_PIPELINE: pipeline}
