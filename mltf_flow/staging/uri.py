"""Dataset URIs: the forms a pipeline input may take, parsed and checked before anything runs.

Accepted forms::

    /abs/dir   rel/dir   /abs/file.root   /abs/dir/*.root      local paths (globs allowed)
    file:///abs/dir      file:///abs/dir/*.root                  the same as URIs
    rucio://scope:name                                           a Rucio DID (dataset, container or file)
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from mltf_flow.errors import ConfigError

_DID = re.compile(r"^(?P<scope>[A-Za-z0-9_.\-]{1,25}):(?P<name>[A-Za-z0-9_.\-/]{1,250})$")


@dataclass(frozen=True)
class DatasetURI:
    """A parsed dataset URI; ``canonical`` is what cache keys and manifests record."""

    scheme: str  # "file" or "rucio"
    canonical: str
    path: Path | None = None
    pattern: str | None = None
    scope: str | None = None
    name: str | None = None


def parse_dataset_uri(text: str) -> DatasetURI:
    """Parse ``text`` into a :class:`DatasetURI` or raise :class:`ConfigError` saying what is wrong."""
    raw = text.strip()
    if not raw:
        raise ConfigError("empty dataset URI. Pass a path, file:///PATH or rucio://SCOPE:NAME.")
    if raw.startswith("rucio:"):
        did = raw[len("rucio:") :].lstrip("/")
        match = _DID.match(did)
        if not match:
            raise ConfigError(
                f"dataset URI {raw!r} is not a valid Rucio DID: expected rucio://SCOPE:NAME, "
                "e.g. rucio://user.jdoe:jets_2024_v1."
            )
        return DatasetURI("rucio", f"rucio://{did}", scope=match["scope"], name=match["name"])
    parsed = urllib.parse.urlparse(raw)
    if parsed.scheme == "file":
        # Not parsed.path: '?' and '#' would start a query/fragment and cut off a glob like run_?.root.
        rest = raw[len("file:") :]
        host = ""
        if rest.startswith("//"):
            host, slash, path_part = rest[2:].partition("/")
            rest = slash + path_part
        if host not in ("", "localhost"):
            raise ConfigError(
                f"dataset URI {raw!r} names host {host!r}; file URIs must be local: file:///ABS/PATH."
            )
        local = urllib.parse.unquote(rest)
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise ConfigError(
            f"dataset URI {raw!r}: scheme {parsed.scheme!r} is not supported. Use a local path, "
            "file:///PATH or rucio://SCOPE:NAME."
        )
    else:
        local = raw
    path = Path(os.path.abspath(os.path.expanduser(local)))
    pattern = None
    if any(ch in path.name for ch in "*?["):
        path, pattern = path.parent, path.name
    if any(ch in str(path) for ch in "*?["):
        raise ConfigError(f"dataset URI {raw!r}: wildcards are allowed in the last path component only.")
    canonical = (path / pattern).as_uri().replace("%2A", "*") if pattern else path.as_uri()
    return DatasetURI("file", canonical, path=path, pattern=pattern)
