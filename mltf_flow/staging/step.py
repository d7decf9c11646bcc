"""StageStep: the Luigi task that makes a dataset available and writes its manifest.

Its output is a :class:`~mltf_flow.targets.manifest.ManifestTarget`; downstream steps get the manifest
path as a parameter and chain the manifest digest into their cache keys. The manifest is written last,
atomically: a staging that fails at any point leaves none behind.

``rucio://`` staging (rule or download, :mod:`mltf_flow.staging.rucio`) is recorded as an MLflow run of
its own (role ``stage``, under the invocation's parent run): DID, rule id, RSE expression, the manifest as
an artifact and as the run's dataset input. Local datasets need no run: their manifest is the record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import luigi

from mltf_flow import phases
from mltf_flow.config import Settings, load_settings
from mltf_flow.console import use_console
from mltf_flow.errors import DatasetNotFound
from mltf_flow.failure_report import watch_failures
from mltf_flow.input_check import check_luigi_command_line, input_errors, name_parse_errors
from mltf_flow.invocation import invocation_id, once_per_invocation
from mltf_flow.luigi_defaults import apply_luigi_defaults
from mltf_flow.pipeline_graph import STAGE_KIND
from mltf_flow.progress import report_status
from mltf_flow.run_guard import run_guard
from mltf_flow.staging.local import stage_local
from mltf_flow.staging.manifest import write_manifest
from mltf_flow.staging.uri import DatasetURI, parse_dataset_uri
from mltf_flow.tags import (
    MLFLOW_NOTE,
    TAG_DATASET_FILES,
    TAG_DATASET_URI,
    TAG_INVOCATION_ID,
    TAG_MANIFEST_DIGEST,
    TAG_PIPELINE,
    TAG_PROFILE,
    TAG_ROLE,
    TAG_RUCIO_MODE,
    TAG_RUCIO_RSE_EXPRESSION,
    TAG_RUCIO_RULE_ID,
    TAG_STEP,
    TAG_TASK_ID,
)
from mltf_flow.targets.manifest import ManifestTarget

_log = logging.getLogger(__name__)

apply_luigi_defaults()  # see mltf_flow.luigi_defaults: failures exit non-zero wherever luigi runs


class StageStep(luigi.Task):
    """Stage ``dataset`` (a local path, ``file://`` or ``rucio://`` URI)."""

    #: What this task is to the status view and the picture (mltf_flow.pipeline_status).
    mltf_kind: ClassVar[str] = STAGE_KIND

    dataset: str = luigi.Parameter(description="dataset: /path, file:///path[/*.root] or rucio://scope:name")
    profile: str | None = luigi.OptionalParameter(
        default=None, significant=False, description="profile whose rucio: section says how to stage"
    )
    pipeline_profile: str | None = luigi.OptionalParameter(
        default=None, significant=False, visibility=luigi.parameter.ParameterVisibility.HIDDEN,
        description="profile inherited from the step that requires this one",
    )
    pipeline: str | None = luigi.OptionalParameter(
        default=None, significant=False, visibility=luigi.parameter.ParameterVisibility.HIDDEN,
        description="pipeline (MLflow experiment) the staging run belongs to",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name_parse_errors(cls)

    def uri(self) -> DatasetURI:
        return parse_dataset_uri(str(self.dataset))

    def check_input(self) -> list[luigi.Task]:
        """The dataset, before anything runs (mltf_flow.input_check): a valid URI, and a local path that exists."""
        uri = self.uri()
        if uri.scheme == "file" and uri.path is not None and not uri.path.exists():
            raise DatasetNotFound(
                f"dataset {uri.canonical}: {uri.path} does not exist (dataset of {self.task_family}). Check the "
                "path, or create the sample data (make data)."
            )
        return []

    def complete(self) -> bool:
        with input_errors():  # on `luigi --module`: one line and exit code 2 (mltf_flow.input_check)
            check_luigi_command_line(self)
            return bool(super().complete())  # type: ignore[no-untyped-call]

    def settings(self) -> Settings:
        """The settings of this invocation: resolved once, then handed down."""
        return once_per_invocation(self._memo, "settings", load_settings)

    def manifest_path(self, settings: Settings | None = None) -> Path:
        """Where the manifest lives (``settings``: those handed down by the step that reads it)."""
        settings = settings or self.settings()
        slot = hashlib.sha256(self.uri().canonical.encode()).hexdigest()[:20]
        return settings.work_dir / "datasets" / slot / "manifest.json"

    def output(self) -> ManifestTarget:
        return ManifestTarget(self.manifest_path(), self.uri())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        use_console()
        watch_failures(self, StageStep)  # recorded for the failure report (mltf_flow.failure_report)
        self._memo: dict[str, Any] = {}

    def run(self) -> None:
        uri = self.uri()
        # run() means the manifest is missing or no longer true: remove it first, so that a staging that
        # fails now leaves no manifest of an older state behind.
        self.manifest_path().unlink(missing_ok=True)
        report_status(self, f"staging {uri.canonical}")
        manifest = self._stage_rucio(uri) if uri.scheme == "rucio" else self._stage_local(uri)
        phases.reached(phases.STAGE_CHECKSUMMED)
        write_manifest(self.manifest_path(), manifest)
        phases.reached(phases.STAGE_DONE)
        report_status(self, f"staged {len(manifest['files'])} files, digest {manifest['digest'][:12]}", percent=100)

    def _stage_local(self, uri: DatasetURI) -> dict[str, Any]:
        from mltf_flow.progress import StagingProgress

        with StagingProgress(self, uri.canonical) as progress:
            return stage_local(uri, progress=progress.update)

    def _stage_rucio(self, uri: DatasetURI) -> dict[str, Any]:
        from mltf_flow.clusters.profiles import get_profile
        from mltf_flow.lease import renewer
        from mltf_flow.progress import RuleProgress
        from mltf_flow.staging.rucio import RucioStager, forget, rucio_settings
        from mltf_flow.tracking import Tracker

        settings = self.settings()
        profile = get_profile(self.profile or self.pipeline_profile or settings.profile)
        rucio = rucio_settings(profile.rucio, f"profile {profile.name!r} ({profile.source_of('rucio')})")
        progress = RuleProgress(self, uri.canonical)
        stager = RucioStager(
            uri, rucio, cache_dir=Path(os.path.expandvars(rucio.download_dir)).expanduser() if rucio.download_dir
            else settings.work_dir / "rucio-cache", progress=progress.update,
        )
        # Settings, credentials and the DID are checked before anything is recorded or requested.
        files = stager.check()
        tracker = Tracker(settings)
        pipeline = self.pipeline or "datasets"
        experiment_id = tracker.ensure_experiment(settings.experiment_for(pipeline))
        parent_id = tracker.parent_run(experiment_id, pipeline, invocation_id()) if self.pipeline else None
        from mltf_flow.run_description import run_name

        name = run_name("stage", {"dataset": uri.canonical.split("://", 1)[-1]})
        run_id = tracker.create_step_run(experiment_id, parent_id=parent_id, run_name=name, params={}, tags={
            TAG_ROLE: "stage", TAG_STEP: "stage", TAG_PIPELINE: pipeline, TAG_DATASET_URI: uri.canonical,
            TAG_RUCIO_MODE: rucio.mode, TAG_RUCIO_RSE_EXPRESSION: rucio.rse_expression or "",
            TAG_PROFILE: profile.name, TAG_INVOCATION_ID: invocation_id(), TAG_TASK_ID: self.task_id,
        })
        stager.on_rule = lambda rule: tracker.set_tags(run_id, {TAG_RUCIO_RULE_ID: rule})
        leases = renewer(settings.tracking_uri, settings.lease_seconds)  # a rule can take hours
        leases.hold(run_id, parent_id or "")
        try:
            with run_guard(tracker, run_id, parent_id=parent_id, step="stage") as guard:
                with progress:
                    manifest = stager.stage(files)
                manifest["mlflow_run_id"] = run_id
                self._record(tracker, run_id, manifest)
                guard.end(ok=True, exit_code=None)
        finally:
            leases.release(run_id, parent_id or "")
            forget(uri)  # complete() lists the DID again after a staging attempt
        return manifest

    @staticmethod
    def _record(tracker: Any, run_id: str, manifest: dict[str, Any]) -> None:
        """The staging run gets the manifest (artifact and dataset input), rule id and digest; FINISHED."""
        import tempfile

        from mlflow.entities import Dataset, DatasetInput, InputTag

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "manifest.json"
            path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            tracker.log_artifact(run_id, path, "mltf")
        did = manifest["did"]
        dataset = Dataset(
            name=f"{did['scope']}:{did['name']}", digest=manifest["digest"][:36], source_type="rucio",
            source=json.dumps({"uri": manifest["uri"], "rule_id": manifest.get("rule_id"),
                               "rse_expression": manifest.get("rse_expression")}),
            schema=None, profile=json.dumps({"files": len(manifest["files"]),
                                             "bytes": sum(f["size"] for f in manifest["files"])}),
        )
        tracker.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context",
                                                                                         "staging")])])
        from mltf_flow.run_description import stage_description

        rule_id = str(manifest.get("rule_id") or "")
        note = stage_description(manifest["uri"], manifest["digest"], len(manifest["files"]), rule_id=rule_id,
                                 rse_expression=str(manifest.get("rse_expression") or ""))
        tracker.set_tags(run_id, {TAG_MANIFEST_DIGEST: manifest["digest"], TAG_RUCIO_RULE_ID: rule_id,
                                  TAG_DATASET_FILES: str(len(manifest["files"])), MLFLOW_NOTE: note})

    # -- as an upstream of MLflow steps ------------------------------------------------------------
    def _manifest(self) -> dict[str, Any] | None:
        return self.output().read()

    def upstream_key(self) -> str | None:
        manifest = self._manifest()
        return None if manifest is None else str(manifest["digest"])

    def dataset_inputs(self) -> list[dict[str, str]]:
        manifest = self._manifest()
        if manifest is None:
            return []
        return [{"uri": self.uri().canonical, "digest": str(manifest["digest"])}]

    def output_spec(self, output: str) -> str:
        return output or "manifest"  # one output, the manifest

    def resolve_output(self, output: str | None, settings: Settings) -> str:
        return str(self.manifest_path(settings))

    def upstream_run_id(self) -> str | None:
        return None  # a local dataset has no run; a rucio one is linked through its manifest

    def manifest_file(self) -> Path | None:
        return self.manifest_path()
