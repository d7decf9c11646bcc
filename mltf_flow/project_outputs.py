"""Files that step runs wrote into their own project directory: outputs, never code.

The launcher takes a :func:`snapshot` of the project directory (path -> size and mtime) before a step's
command starts and compares it with one taken after it ended. Files that appeared or changed are
recorded here, per project, in ``<work_dir>/project-outputs/<project>.json``; :mod:`mltf_flow.code_set`
leaves them out of later keys (except scripts, which users edit while steps run). A file a user edits
*during* a run is indistinguishable from an output: ``mltf-flow status --files`` lists the recorded
outputs and the record file, and an explicit ``code:`` entry always wins.

The record also says which run wrote each file and what it looked like afterwards (size, mtime). A step
whose complete run is reused while its files in the project were since rewritten by another run (other
parameters, a failed attempt) is not complete (:func:`stale_outputs`): it runs again, so the next step
never reads another run's files under this run's lineage.

The record is a cache hint like the sqlite store next to it: it lives in the work dir, so two work dirs
learn a project's outputs separately.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from mltf_flow.atomic import write_json
from mltf_flow.code_set import SKIP_DIRS, has_source_suffix

#: A snapshot stops after this many files: a project directory that big holds data, and a partial
#: snapshot only means fewer files are learnt as outputs (they stay out of the key anyway when large).
MAX_SNAPSHOT_FILES = 50_000

Snapshot = dict[str, tuple[int, int]]


def record_path(work_dir: Path, root: Path) -> Path:
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return work_dir / "project-outputs" / f"{root.name}-{digest}.json"


def load_outputs(work_dir: Path, root: Path) -> frozenset[str]:
    """The files recorded as outputs of this project's step runs (empty when none or unreadable)."""
    path = record_path(work_dir, root)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return frozenset()
    files = data.get("files") if isinstance(data, dict) else None
    return frozenset(files) if isinstance(files, dict) else frozenset()


def snapshot(root: Path) -> Snapshot:
    """(size, mtime_ns) of every file below ``root`` outside skipped directories."""
    seen: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        base = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            rel = name if base == "." else f"{base}/{name}"
            try:
                stat = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            seen[rel] = (stat.st_size, stat.st_mtime_ns)
            if len(seen) >= MAX_SNAPSHOT_FILES:
                return seen
    return seen


def written(before: Snapshot, after: Snapshot, keep: Iterable[str] = (), known: Iterable[str] = ()) -> list[str]:
    """Files new or changed between two snapshots, minus scripts (users edit them while steps run) and
    the files in ``keep`` (those the command names) that existed before and are not ``known`` outputs: a
    config the command names and the user edited meanwhile stays code, while ``--out model.pkl``, created
    by the first run, is an output from then on."""
    protected = set(keep) - set(known)
    return sorted(rel for rel, state in after.items()
                  if before.get(rel) != state and not has_source_suffix(rel)
                  and not (rel in protected and rel in before))


def stale_outputs(work_dir: Path, root: Path, step: str, run_id: str) -> list[str]:
    """Files this step writes into its project that no longer are what run ``run_id`` left there: last
    written by another run (another parameter set, a failed attempt), changed since, or gone. A step whose
    complete run is reused would otherwise leave them for the next step to read (wrong data, wrong lineage)."""
    path = record_path(work_dir, root)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return []
    stale = []
    for rel, entry in files.items():
        if not isinstance(entry, dict) or entry.get("step") != step:
            continue
        try:
            stat = os.stat(root / rel)
            now = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            now = None
        if entry.get("run_id") != run_id or now != entry.get("state", now):
            stale.append(rel)
    return sorted(stale)


def remember_outputs(work_dir: Path, root: Path, files: Iterable[str], step: str, run_id: str,
                     states: Snapshot | None = None) -> None:
    """Add ``files`` to the project's record with the run that wrote them and their (size, mtime) after it
    (under a file lock: parallel steps share the record)."""
    from filelock import FileLock

    files = list(files)
    if not files:
        return
    path = record_path(work_dir, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        known: dict[str, Mapping[str, object]] = dict(data.get("files") or {}) if isinstance(data, dict) else {}
        for rel in files:
            entry: dict[str, object] = {"step": step, "run_id": run_id}
            if states is not None and rel in states:
                entry["state"] = list(states[rel])
            known[rel] = entry
        write_json(path, {"project": str(root.resolve()), "files": known})


__all__ = ["load_outputs", "record_path", "remember_outputs", "snapshot", "stale_outputs", "written"]
