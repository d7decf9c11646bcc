"""Which files of a project are its *code*: what a step's cache key covers, and never its outputs.

``mlflow run`` runs a command in the project directory, so many projects write their outputs there
(``out/``, ``model.pkl``, plots, ``metrics.json``). If those files were hashed as code, an identical
second invocation would see new "code" and run again. A step's code paths are a list of entries:

``auto`` (the default)
    Inside git: every tracked file, plus untracked, not-ignored files that look like code. Outside
    git: the files that look like code. A file *looks like code* when its suffix is a source suffix
    (:data:`SOURCE_SUFFIXES`), a configuration suffix (:data:`CONFIG_SUFFIXES`) or its name is a
    definition file (:data:`DEFINITION_NAMES`, ``requirements*.txt``), and it is at most
    :data:`MAX_CODE_BYTES` (larger untracked files are *reported*, never silently hashed). Files the
    entry point's command names (``python train.py --config cfg.json``) or its ``path`` parameters point
    at (``-P calib=data/calib.csv``) are code. Files that a step run of this project wrote (recorded by
    :mod:`mltf_flow.project_outputs`) are not code unless they have a source suffix: a step that writes
    ``summary.yaml``, rewrites a tracked ``results/latest.yaml`` or creates the ``model.pkl`` its command
    names (``--out model.pkl``) keeps its key.
a path (file or directory, relative to the project) or a glob
    Exactly those files (below a directory: all of them, git-ignored ones left out), whatever their
    suffix or size: an explicit list is the user's word.
``!glob``
    Leaves matching files out of what the other entries selected.

Directories that hold tools' outputs and caches (:data:`SKIP_DIRS`) are never code. Nothing here
imports mlflow: Luigi computes keys in every ``complete()``.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mltf_flow.errors import ConfigError

AUTO = "auto"
#: Untracked files larger than this are reported and not hashed (unless listed explicitly).
MAX_CODE_BYTES = 1024 * 1024

#: Caches, VCS metadata, our own work dirs and the output dirs of common tools (MLflow, Lightning,
#: Weights & Biases, Hydra): never code, even when no .gitignore says so.
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".mltf", "mlruns", "mlartifacts", ".venv", "venv", ".tox", ".nox",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints", "lightning_logs", "wandb", "outputs",
    "multirun", ".hydra", "node_modules", ".eggs",
})
_NEVER_SUFFIXES = (".pyc", ".pyo")
# VCS metadata, and mltf_flow's and Luigi's own configuration: what they say enters keys as the step's
# description (inputs, outputs, code, parameters), so an edit to a comment in them reruns nothing.
_NEVER_NAMES = frozenset({".gitignore", ".gitattributes", ".gitmodules", ".dockerignore", ".DS_Store",
                          "pipeline.yaml", "luigi.cfg", "luigi.toml", "profiles.yaml"})

SOURCE_SUFFIXES = frozenset({
    ".py", ".pyx", ".pxd", ".pyi", ".ipynb", ".sh", ".bash", ".zsh", ".r", ".jl", ".c", ".cc", ".cpp", ".cxx",
    ".h", ".hh", ".hpp", ".hxx", ".cu", ".cuh", ".f", ".f90", ".for", ".js", ".ts", ".sql", ".pl", ".lua",
    ".go", ".rs", ".java", ".scala", ".m", ".jsonnet", ".j2", ".jinja", ".tpl",
})
# Not .json: metrics.json / results.json are the most common outputs, and the record of outputs lives in
# one work dir (another work dir would rehash them). A JSON config is code when tracked in git, named on
# the command, or listed in code:.
CONFIG_SUFFIXES = frozenset({".yaml", ".yml", ".toml", ".cfg", ".ini", ".conf"})
DEFINITION_NAMES = frozenset({
    "mlproject", "makefile", "dockerfile", "containerfile", "cmakelists.txt", "snakefile", "apptainer.def",
    "singularity.def", "setup.py", "manifest.in",
})


def has_source_suffix(rel: str) -> bool:
    """Scripts and sources: code even when a step run rewrote them (users edit them while steps run)."""
    return os.path.splitext(rel)[1].lower() in SOURCE_SUFFIXES


def looks_like_code(rel: str) -> bool:
    name = os.path.basename(rel).lower()
    suffix = os.path.splitext(name)[1]
    if suffix in SOURCE_SUFFIXES or suffix in CONFIG_SUFFIXES or name in DEFINITION_NAMES:
        return True
    return name.endswith(".txt") and name.startswith(("requirements", "constraints"))


def skipped(rel: str) -> bool:
    """Never code: below a skipped directory, bytecode, VCS metadata."""
    parts = rel.split("/")
    return bool(SKIP_DIRS.intersection(parts[:-1])) or parts[-1].endswith(_NEVER_SUFFIXES) \
        or parts[-1] in _NEVER_NAMES


def command_files(root: Path, command: str) -> frozenset[str]:
    """Files of the project that a command template names (``python train.py --config cfg.json``)."""
    try:
        tokens = shlex.split(command)
    except ValueError:
        tokens = command.split()
    named: set[str] = set()
    for token in tokens:
        for part in token.split("=")[-1:] if token.startswith("-") else [token]:
            if not part or "{" in part or part.startswith("-"):
                continue
            path = (root / part).resolve()
            if path.is_file() and path.is_relative_to(root):
                named.add(path.relative_to(root).as_posix())
    return frozenset(named)


@dataclass(frozen=True)
class CodeSet:
    """The files a step's key covers, and what was left out on purpose (shown by ``mltf-flow status``)."""

    root: Path
    files: tuple[str, ...]
    in_git: bool
    #: Untracked files over MAX_CODE_BYTES: not hashed, reported.
    large: tuple[str, ...] = ()
    #: Files a step run of this project wrote (not hashed).
    outputs: tuple[str, ...] = ()


def _git_listing(root: Path) -> dict[str, bool] | None:
    """Files under ``root`` that git knows or would add, mapped to "tracked"; None outside git."""
    if not _maybe_in_git(root):
        return None  # no git process (1-2 ms) for a project outside any work tree
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "-t", "--cached", "--others", "--exclude-standard"],
            capture_output=True, text=True, check=False, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    listing: dict[str, bool] = {}
    for entry in out.stdout.split("\0"):
        if len(entry) < 3:
            continue
        status, rel = entry[0], entry[2:]
        # Deleted-but-tracked files are listed by --cached; they are simply absent from the worktree.
        if not skipped(rel) and (root / rel).is_file():
            listing[rel] = listing.get(rel, False) or status != "?"
    return listing


def _maybe_in_git(root: Path) -> bool:
    """False only when git certainly finds no work tree: no ``.git`` in ``root`` or above, and no variable
    that points git elsewhere."""
    if os.environ.get("GIT_DIR") or os.environ.get("GIT_WORK_TREE"):
        return True
    return any((directory / ".git").exists() for directory in (root, *root.parents))


def _walk(root: Path) -> dict[str, bool]:
    listing: dict[str, bool] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        base = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            rel = name if base == "." else f"{base}/{name}"
            if not skipped(rel):
                listing[rel] = False
    return listing


def _size(root: Path, rel: str) -> int:
    try:
        return (root / rel).stat().st_size
    except OSError:
        return 0


def _auto(root: Path, listing: dict[str, bool], named: frozenset[str], outputs: frozenset[str],
          chosen: set[str], large: set[str], excluded: set[str]) -> None:
    for rel in named - listing.keys():  # named but git-ignored: the command still reads it
        listing = {**listing, rel: False}
    for rel, tracked in listing.items():
        if rel in outputs and not has_source_suffix(rel):
            excluded.add(rel)  # even when named: `--out model.pkl` names an output
        elif rel in named and (tracked or _size(root, rel) <= MAX_CODE_BYTES):
            chosen.add(rel)
        elif rel in named:
            large.add(rel)
        elif tracked:
            chosen.add(rel)
        elif _size(root, rel) > MAX_CODE_BYTES:
            large.add(rel)
        elif looks_like_code(rel):
            chosen.add(rel)


def _explicit(root: Path, entry: str, listing: dict[str, bool], chosen: set[str]) -> None:
    if any(ch in entry for ch in "*?["):
        matches = [rel for rel in listing if fnmatch.fnmatch(rel, entry)]
        if not matches:
            raise ConfigError(f"code pattern {entry!r} matches no file under {root}.")
        chosen.update(matches)
        return
    path = (root / entry).resolve()
    if not path.exists() or not path.is_relative_to(root):
        raise ConfigError(
            f"code path {entry!r} does not exist under {root}. List files, directories or globs of the project, "
            f"or {AUTO!r} for the default."
        )
    rel = path.relative_to(root).as_posix()
    if path.is_file():
        chosen.add(rel)
    else:
        prefix = "" if rel == "." else rel + "/"
        chosen.update(f for f in listing if f.startswith(prefix))


def parameter_files(root: Path, types: Mapping[str, str], values: Mapping[str, object]) -> frozenset[str]:
    """Files of the project that ``path`` parameters point at (a cut file, a calibration table): code like
    files the command names, since ``--calib {calib}`` is how most commands name them."""
    named: set[str] = set()
    for name, value in values.items():
        if types.get(name) != "path" or not isinstance(value, str) or "://" in value:
            continue
        path = (root / value).resolve()
        if path.is_file() and path.is_relative_to(root):
            named.add(path.relative_to(root).as_posix())
    return frozenset(named)


def select_code(
    root: Path, paths: Sequence[str] = (AUTO,), *, command: str = "", outputs: Iterable[str] = (),
    named: Iterable[str] = (),
) -> CodeSet:
    """The code of the project at ``root`` for a step with code ``paths`` (see the module docstring)."""
    root = root.resolve()
    entries = list(paths) or [AUTO]
    git = _git_listing(root)
    listing = git if git is not None else _walk(root)
    named = (command_files(root, command) if command else frozenset()) | frozenset(named)
    chosen: set[str] = set()
    large: set[str] = set()
    excluded: set[str] = set()
    for entry in entries:
        if entry == AUTO:
            _auto(root, listing, named, frozenset(outputs), chosen, large, excluded)
        elif not entry.startswith("!"):
            _explicit(root, entry, listing, chosen)
    for entry in entries:
        if entry.startswith("!"):
            chosen = {rel for rel in chosen if not fnmatch.fnmatch(rel, entry[1:])}
    return CodeSet(root=root, files=tuple(sorted(chosen)), in_git=git is not None,
                   large=tuple(sorted(large - chosen)), outputs=tuple(sorted(excluded - chosen)))


__all__ = ["AUTO", "MAX_CODE_BYTES", "CodeSet", "command_files", "has_source_suffix", "looks_like_code",
           "parameter_files", "select_code", "skipped"]
