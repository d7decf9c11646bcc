"""Cache keys: what makes two step runs interchangeable.

The key is the sha256 of canonical JSON (sorted keys, no whitespace) over:

* ``v``          the key schema version (:data:`KEY_VERSION`; bump it when the recipe changes),
* ``project``    project name and entry point name,
* ``command``    the entry point's command template,
* ``params``     parameters normalised to their MLproject types, defaults merged (see
                 :meth:`mltf_flow.mlproject.EntryPoint.normalise`); parameters filled from upstream
                 outputs are left out, because the upstream keys below already pin them, and
                 secret-looking ones enter by name only (:func:`keyed_params`),
* ``code``       :func:`code_hash` of the files the step depends on (committed or not),
* ``env``        the project's environment spec hash,
* ``upstream``   the cache keys of upstream steps, by the parameter they feed,
* ``inputs``     dataset URIs and their manifest digests,
* ``execution``  only when a step declares it: how the run executes where that changes the result
                 (the world size of distributed training: the global batch grows with it).

Nothing here imports mlflow, dask or torch: Luigi computes keys in every ``complete()`` call.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltf_flow.errors import ConfigError

KEY_VERSION = 1

# Never part of a step's code: caches, build output, VCS metadata and our own work dirs.
_SKIP_DIRS = {".git", "__pycache__", ".mltf", "mlruns", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, compact separators, floats as Python's shortest repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class CodeVersion:
    """What code a step ran: a content hash of its files, and whether they were found through git."""

    hash: str
    files: int
    in_git: bool


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _walk(root: Path, paths: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for rel in paths:
        start = (root / rel).resolve()
        if start.is_file():
            found.append(start)
            continue
        if not start.is_dir():
            raise ConfigError(
                f"code path {rel!r} does not exist under {root}. List files or directories of the project."
            )
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            found.extend(Path(dirpath) / f for f in filenames if not f.endswith(_SKIP_SUFFIXES))
    return found


def _git_files(root: Path, paths: Sequence[str]) -> list[Path] | None:
    """Tracked plus untracked-but-not-ignored files under ``paths``, or None outside git."""
    out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths)
    if out is None:
        return None
    files = {(root / name) for name in out.split("\0") if name}
    # Deleted-but-tracked files are listed by --cached; they are simply absent from the worktree.
    # Work dirs and caches are never code, even when no .gitignore says so (.mltf/mlflow.db changes
    # after every run and would make every key new).
    return [
        f for f in files
        if f.is_file() and not f.name.endswith(_SKIP_SUFFIXES)
        and not _SKIP_DIRS.intersection(f.relative_to(root).parts[:-1])
    ]


def code_hash(root: Path, paths: Sequence[str] = (".",)) -> CodeVersion:
    """Hash the *working tree* contents of ``paths`` under project ``root``.

    Inside git this covers the committed files and every uncommitted edit or new untracked file
    (ignored files are left out); outside git it hashes every file below the paths. Hashing
    contents rather than the commit id means an edit elsewhere in the repository, or a commit
    that does not touch these files, does not invalidate the step.
    """
    root = root.resolve()
    missing = [p for p in paths if not (root / p).exists()]
    if missing:
        raise ConfigError(
            f"code path(s) {missing} do not exist under {root}. List files or directories of the project."
        )
    files = _git_files(root, paths)
    in_git = files is not None
    if files is None:
        files = _walk(root, paths)
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return CodeVersion(hash=digest.hexdigest(), files=len(files), in_git=in_git)


def git_state(root: Path, paths: Sequence[str] = (".",)) -> tuple[str | None, bool]:
    """(HEAD commit, whether ``paths`` have uncommitted changes) for lineage tags; (None, False)
    outside git. Kept out of :func:`code_hash`: the key does not need it and it costs two git calls."""
    head = _git(root, "rev-parse", "HEAD")
    if head is None:
        return None, False
    status = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", *paths)
    return head.strip(), bool(status and status.strip())


def keyed_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as they enter a key: secret-looking ones (``api_token``, ``password``) by name only. A key
    is a tag anyone can read, and a hash over a short token would let them test guesses; a new token
    does not change what a step computes either."""
    from mltf_flow.tracking import is_secret_name

    return {k: "<secret>" if is_secret_name(k) else v for k, v in params.items()}


def cache_key(
    *,
    project: str,
    entry_point: str,
    command: str,
    params: Mapping[str, Any],
    code: str,
    env: str,
    upstream: Mapping[str, str],
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
        "upstream": dict(upstream),
        "inputs": sorted((dict(i) for i in inputs), key=canonical_json),
    }
    if execution:  # absent otherwise: keys of steps without it stay what they were
        doc["execution"] = dict(execution)
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()
