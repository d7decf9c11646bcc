"""StageStep: the Luigi task that makes a dataset available and writes its manifest.

Its output is a :class:`~mltf_flow.targets.manifest.ManifestTarget`; downstream steps get the manifest
path as a parameter and chain the manifest digest into their cache keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import luigi

from mltf_flow.config import Settings, load_settings
from mltf_flow.errors import RucioNotConfigured
from mltf_flow.progress import report_status
from mltf_flow.staging.local import stage_local
from mltf_flow.staging.manifest import write_manifest
from mltf_flow.staging.uri import DatasetURI, parse_dataset_uri
from mltf_flow.targets.manifest import ManifestTarget


class StageStep(luigi.Task):
    """Stage ``dataset`` (a local path, ``file://`` or ``rucio://`` URI)."""

    dataset: str = luigi.Parameter(description="dataset: /path, file:///path[/*.root] or rucio://scope:name")

    def uri(self) -> DatasetURI:
        return parse_dataset_uri(str(self.dataset))

    def manifest_path(self, settings: Settings | None = None) -> Path:
        settings = settings or load_settings()
        slot = hashlib.sha256(self.uri().canonical.encode()).hexdigest()[:20]
        return settings.work_dir / "datasets" / slot / "manifest.json"

    def output(self) -> ManifestTarget:
        return ManifestTarget(self.manifest_path(), self.uri())

    def run(self) -> None:
        uri = self.uri()
        if uri.scheme == "rucio":
            raise RucioNotConfigured(
                f"cannot stage {uri.canonical}: Rucio is not configured in this installation. Stage the "
                "files another way and pass a local path or file:// URI, or configure Rucio (rucio.cfg, "
                "RUCIO_CONFIG) once rucio:// staging is enabled."
            )
        report_status(self, f"staging {uri.canonical}")
        manifest = stage_local(uri)
        write_manifest(self.manifest_path(), manifest)
        report_status(self, f"staged {len(manifest['files'])} files, digest {manifest['digest'][:12]}")

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

    def resolve_output(self, output: str | None, settings: Settings) -> str:
        return str(self.manifest_path(settings))
