"""Cache keys: what makes two step runs interchangeable.

The key is the sha256 of canonical JSON (sorted keys, no whitespace) over:

* ``v``          the key schema version (:data:`KEY_VERSION`; bump it when the recipe changes),
* ``project``    project name and entry point name,
* ``command``    the entry point's command template,
* ``params``     parameters normalised to their MLproject types, defaults merged (see
                 :meth:`mltf_flow.mlproject.EntryPoint.normalise`); a parameter filled from an upstream
                 output enters as ``{"from": <that step's key>, "output": <its artifact path>}``, and
                 secret-looking ones by name only (:func:`keyed_params`),
* ``code``       :func:`code_hash` of the step's code (committed or not, never its outputs:
                 :mod:`mltf_flow.code_set`),
* ``env``        the project's environment spec hash,
* ``upstream``   the cache keys of upstream steps, sorted: what a requirement is called in one front end
                 or the other (``dataset`` in Python, ``stage`` in pipeline.yaml) does not matter,
* ``inputs``     dataset URIs and their manifest digests,
* ``execution``  only when a step declares it: how the run executes where that changes the result
                 (the world size of distributed training: the global batch grows with it).

Nothing here imports mlflow, dask or torch: Luigi computes keys in every ``complete()`` call.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mltf_flow.code_set import AUTO, CodeSet, select_code
from mltf_flow.redaction import is_secret_name, strip_credentials

KEY_VERSION = 2  # 2: code = code_set.select_code (never outputs); upstream by key, not requirement name


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, compact separators, floats as Python's shortest repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class CodeVersion:
    """What code a step ran: a content hash of its files, and whether they were found through git."""

    hash: str
    files: int
    in_git: bool
    #: Which files, and what was left out (large untracked files, recorded outputs).
    selection: CodeSet | None = field(default=None, compare=False, repr=False)
    #: (relative path, sha256 of its contents) per file, as hashed.
    digests: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def without(self, drop: Iterable[str]) -> CodeVersion:
        """This version minus files found to be outputs, with the contents *as hashed* (not as now):
        the code that ran, so a file edited while the step ran still counts as changed later."""
        gone = set(drop)
        kept = tuple((rel, sha) for rel, sha in self.digests if rel not in gone)
        return CodeVersion(hash=_digest(kept), files=len(kept), in_git=self.in_git, selection=self.selection,
                           digests=kept)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def code_hash(
    root: Path, paths: Sequence[str] = (AUTO,), *, command: str = "", outputs: Iterable[str] = (),
    named: Iterable[str] = (),
) -> CodeVersion:
    """Hash the *working tree* contents of the project's code (:func:`mltf_flow.code_set.select_code`).

    Committed files and every uncommitted edit count alike; hashing contents rather than the commit id
    means an edit elsewhere in the repository, or a commit that does not touch these files, does not
    invalidate the step. The hash covers relative paths and contents only, so a git checkout and a plain
    copy of the same files hash alike.
    """
    selection = select_code(root, paths, command=command, outputs=outputs, named=named)
    digests = tuple((rel, hashlib.sha256((selection.root / rel).read_bytes()).hexdigest()) for rel in selection.files)
    return CodeVersion(hash=_digest(digests), files=len(digests), in_git=selection.in_git, selection=selection,
                       digests=digests)


def _digest(digests: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for rel, sha in digests:
        digest.update(rel.encode() + b"\0")
        digest.update(bytes.fromhex(sha))
    return digest.hexdigest()


def git_state(root: Path, paths: Sequence[str] = (".",)) -> tuple[str | None, bool]:
    """(HEAD commit, whether ``paths`` have uncommitted changes) for lineage tags; (None, False)
    outside git. Kept out of :func:`code_hash`: the key does not need it and it costs two git calls."""
    head = _git(root, "rev-parse", "HEAD")
    if head is None:
        return None, False
    status = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", *paths)
    return head.strip(), bool(status and status.strip())


def git_diff(root: Path, paths: Sequence[str] = (".",)) -> str:
    """The uncommitted changes of ``paths`` against HEAD (``git diff HEAD``; untracked files are not in
    it), logged with a run whose code is dirty; "" outside git or without changes."""
    return _git(root, "diff", "HEAD", "--", *paths) or ""


def keyed_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as they enter a key: secret-looking ones (``api_token``, ``password``) by name only. A key
    is a tag anyone can read, and a hash over a short token would let them test guesses; a new token
    does not change what a step computes either. A URL enters without its password (the same reasons):
    ``postgresql://u:***@host/db``."""
    return {k: "<secret>" if is_secret_name(k) else strip_credentials(v) if isinstance(v, str) else v
            for k, v in params.items()}


def cache_key(
    *,
    project: str,
    entry_point: str,
    command: str,
    params: Mapping[str, Any],
    code: str,
    env: str,
    upstream: Iterable[str],
    inputs: Iterable[Mapping[str, str]] = (),
    execution: Mapping[str, Any] | None = None,
) -> str:
    """The step's cache key (see the module docstring for what each field means)."""
    doc = {
        "v": KEY_VERSION,
        "project": project,
        "entry_point": entry_point,
        "command": command,
        "params": keyed_params(params),
        "code": code,
        "env": env,
        "upstream": sorted(upstream),
        "inputs": sorted((dict(i) for i in inputs), key=canonical_json),
    }
    if execution:  # absent otherwise: keys of steps without it stay what they were
        doc["execution"] = dict(execution)
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()
