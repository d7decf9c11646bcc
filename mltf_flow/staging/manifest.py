"""Dataset manifests: the exact files (sizes, checksums) a pipeline consumed.

A manifest is JSON written atomically (temp file + rename, so a half-written manifest never exists)::

    {"version": 1, "uri": "file:///data/jets", "scheme": "file",
     "files": [{"name": "jets_000.root", "path": "/data/jets/jets_000.root",
                "size": 1234, "mtime_ns": 1700000000000000000, "sha256": "..."}],
     "digest": "<sha256 over (name, size, sha256) of every file>"}

A rucio:// manifest also names the DID, the mode, the RSE expression and the rule id, and its files carry
Rucio's ``adler32`` instead of ``sha256`` (``mltf_flow.staging.rucio``).

The digest depends on contents only (not on where the files live or when they were touched), and
feeds the cache keys of every downstream step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mltf_flow.atomic import write_json
from mltf_flow.cache_key import canonical_json
from mltf_flow.errors import StagingError

MANIFEST_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(files: list[dict[str, Any]]) -> str:
    """sha256 over the (name, size, checksum) triples, in name order. The checksum is the file's
    sha256 (local datasets) or Rucio's adler32, written ``adler32:<hex>`` (rucio:// datasets)."""
    entries = sorted((f["name"], f["size"], f.get("sha256") or f"adler32:{f['adler32']}") for f in files)
    return hashlib.sha256(canonical_json(entries).encode()).hexdigest()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` to ``path`` atomically."""
    write_json(path, manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StagingError(f"manifest {path} cannot be read ({exc}); delete it to stage again.") from exc
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or "digest" not in data:
        raise StagingError(f"manifest {path} has an unknown format; delete it to stage again.")
    return dict(data)
