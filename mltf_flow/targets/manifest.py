"""ManifestTarget: a staged dataset, described by a manifest that is still true."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import luigi

from mltf_flow.errors import StagingError
from mltf_flow.staging.local import still_valid
from mltf_flow.staging.manifest import read_manifest
from mltf_flow.staging.uri import DatasetURI


class ManifestTarget(luigi.Target):
    """Exists when the manifest file exists and still matches the dataset: for local datasets the same
    file list, sizes and modification times; for rucio:// datasets the staged files unchanged on disk and
    the DID still holding exactly these files (a newly attached file means: stage again)."""

    def __init__(self, path: Path, uri: DatasetURI) -> None:
        self.path = path
        self.uri = uri

    def read(self) -> dict[str, Any] | None:
        """The manifest if it exists and is still valid, else None."""
        if not self.path.is_file():
            return None
        try:
            manifest = read_manifest(self.path)
        except StagingError:
            return None
        if manifest.get("uri") != self.uri.canonical:
            return None
        if self.uri.scheme == "file" and not still_valid(self.uri, manifest):
            return None
        if self.uri.scheme == "rucio":
            from mltf_flow.staging import rucio

            if not rucio.still_valid(self.uri, manifest):
                return None
        return manifest

    def exists(self) -> bool:
        return self.read() is not None
