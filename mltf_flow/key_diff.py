"""Why a step will run again: a cache key's ingredients as a record, and what changed between two records.

A cache key (:mod:`mltf_flow.cache_key`) is one hash; it says *that* something changed, never *what*. So
each step run keeps the ingredients of its key as the artifact ``mltf/key.json`` (:func:`key_record`:
per-file code digests, parameters as keyed, environment, upstream keys, dataset digests, entry point and
command template), and :func:`why_changed` compares the record of the step as it would run now with the
record of its last complete run::

    train: code changed: train.py
    features: parameter max_constituents 64 → 32
    train: environment changed (python_env.yaml)

A record holds no secret: parameters enter it as they enter the key (:func:`mltf_flow.cache_key.keyed_params`:
secret-looking names by name only, URLs without their password). Runs made before records existed are
compared on what their tags and params say (:func:`record_from_run`). Pure functions over values (reading the
environment files is the only I/O); nothing here imports mlflow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mltf_flow.cache_key import KEY_VERSION, keyed_params
from mltf_flow.redaction import MASK, is_secret_param, strip_credentials

if TYPE_CHECKING:
    from mltf_flow.step_def import ResolvedStep

#: Where a step run keeps its key's ingredients.
KEY_ARTIFACT = "mltf/key.json"
#: Version of the record's layout (not of the key: that is ``key_version`` inside it).
RECORD_VERSION = 1
_SHOWN = 40  # characters of a parameter value shown in a reason


def key_record(step: ResolvedStep) -> dict[str, Any]:
    """The ingredients of ``step``'s cache key, as JSON-ready values (see the module docstring)."""
    entry, environment, project = step.entry, step.environment, step.project
    env_files: dict[str, str] = {}
    for path in project.env_files():
        rel = str(path.relative_to(project.root))
        env_files[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<missing>"
    params = {name: MASK if is_secret_param(name, value) else value
              for name, value in keyed_params(step.key_params()).items()}
    return {
        "record": RECORD_VERSION,
        "key": step.key,
        "key_version": KEY_VERSION,
        "pipeline": step.pipeline,
        "step": step.name,
        "project": project.name,
        "entry_point": entry.name,
        "command": entry.command,
        "params": params,
        "code": {"hash": step.code.hash, "files": dict(step.code.digests)},
        "env": {"hash": environment.key(), "manager": environment.manager, "files": env_files},
        "upstream": dict(step.upstream),
        "inputs": [{k: strip_credentials(v) for k, v in d.items()} for d in step.datasets],
        "execution": {"world_size": step.world_size} if step.run_on == "ddp" else None,
    }


def record_from_run(tags: Mapping[str, str], params: Mapping[str, str]) -> dict[str, Any]:
    """What a run without ``mltf/key.json`` (made before records existed) says about its key: its key,
    code and environment hashes from tags, its parameters as logged (strings)."""
    from mltf_flow.tags import TAG_CACHE_KEY, TAG_CODE_HASH, TAG_ENV_HASH

    return {"record": 0, "key": tags.get(TAG_CACHE_KEY, ""), "params": dict(params),
            "code": {"hash": tags.get(TAG_CODE_HASH, "")}, "env": {"hash": tags.get(TAG_ENV_HASH, "")}}


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else "null" if value is None else str(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _same_param(old: Any, new: Any, *, logged: bool) -> bool:
    """Equal as keyed; against a run's logged params (strings), equal as MLflow would log ``new``."""
    if not logged:
        return bool(old == new)
    return str(old) == ("" if new is None else str(new))


def _param_reasons(old: Mapping[str, Any], new: Mapping[str, Any], *, logged: bool) -> list[str]:
    reasons = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if isinstance(after, Mapping) or isinstance(before, Mapping):
            continue  # filled from an upstream output: said as the upstream's change
        if name not in old:
            if logged:
                continue  # a run logs only what it was given; a default is no change
            reasons.append(f"parameter {name} added (= {_shown(after)})")
        elif name not in new:
            reasons.append(f"parameter {name} removed (was {_shown(before)})")
        elif not _same_param(before, after, logged=logged):
            reasons.append(f"parameter {name} {_shown(before)} → {_shown(after)}")
    return reasons


def _file_reasons(what: str, old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    changed = sorted(rel for rel in set(old) & set(new) if old[rel] != new[rel])
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    out = []
    for label, names in (("changed", changed), ("added", added), ("removed", removed)):
        if names:
            shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
            out.append(f"{what} {label}: {shown}")
    return out


def _env_reasons(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    if old.get("hash") == new.get("hash"):
        return []
    old_files, new_files = old.get("files"), new.get("files")
    if isinstance(old_files, Mapping) and isinstance(new_files, Mapping):
        files = sorted(rel for rel in set(old_files) | set(new_files) if old_files.get(rel) != new_files.get(rel))
        if files:
            return [f"environment changed ({', '.join(files)})"]
    if old.get("manager") and new.get("manager") and old["manager"] != new["manager"]:
        return [f"environment changed (env manager {old['manager']} → {new['manager']})"]
    if "manager" in old:
        return ["environment changed (its resolved packages)"]
    return ["environment changed"]


def _input_reasons(old: list[Mapping[str, str]], new: list[Mapping[str, str]]) -> list[str]:
    before = {i.get("uri", ""): i.get("digest", "") for i in old}
    after = {i.get("uri", ""): i.get("digest", "") for i in new}
    reasons = []
    for uri in sorted(set(before) | set(after)):
        if uri not in before:
            reasons.append(f"input dataset added: {uri}")
        elif uri not in after:
            reasons.append(f"input dataset removed: {uri}")
        elif before[uri] != after[uri]:
            reasons.append(f"input dataset changed: {uri} (digest {before[uri][:8]} → {after[uri][:8]})")
    return reasons


def _upstream_reasons(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    before, after = old.get("upstream") or {}, new.get("upstream") or {}
    # A staged dataset's key is its manifest digest: said once, as the input dataset's change.
    digests = {i.get("digest") for i in [*(old.get("inputs") or []), *(new.get("inputs") or [])]}
    reasons = []
    for name in sorted(set(before) | set(after)):
        if before.get(name) == after.get(name) or before.get(name) in digests or after.get(name) in digests:
            continue
        if name not in before:
            reasons.append(f"upstream {name} added")
        elif name not in after:
            reasons.append(f"upstream {name} removed")
        else:
            reasons.append(f"upstream {name} changed (key {str(before[name])[:8]} → {str(after[name])[:8]})")
    return reasons


def why_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any], *, own_only: bool = False) -> list[str]:
    """What differs between the record of an earlier complete run (``old``; None: there is none) and the
    record of the step now (``new``), one short phrase each; [] when their keys are equal. ``own_only``: ``new``
    was made before the upstream keys are known (an upstream step runs first), so only the step's own
    ingredients (code, environment, parameters, command) are compared, and [] means none of them changed."""
    if old is None:
        return ["no earlier run"]
    if not own_only and old.get("key") and old.get("key") == new.get("key"):
        return []
    logged = old.get("record") == 0
    reasons: list[str] = []
    if not logged and old.get("key_version") != new.get("key_version"):
        reasons.append(f"cache key recipe changed (v{old.get('key_version')} → v{new.get('key_version')})")
    if not logged and old.get("entry_point") != new.get("entry_point"):
        reasons.append(f"entry point {old.get('entry_point')} → {new.get('entry_point')}")
    elif not logged and old.get("command") != new.get("command"):
        reasons.append("command template changed (MLproject)")
    old_code, new_code = old.get("code") or {}, new.get("code") or {}
    if old_code.get("hash") != new_code.get("hash"):
        files = _file_reasons("code", old_code.get("files") or {}, new_code.get("files") or {}) \
            if "files" in old_code else []
        reasons.extend(files or ["code changed"])
    reasons.extend(_env_reasons(old.get("env") or {}, new.get("env") or {}))
    reasons.extend(_param_reasons(old.get("params") or {}, new.get("params") or {}, logged=logged))
    if not logged and not own_only:
        reasons.extend(_upstream_reasons(old, new))
        reasons.extend(_input_reasons(list(old.get("inputs") or []), list(new.get("inputs") or [])))
        if (old.get("execution") or None) != (new.get("execution") or None):
            before, after = old.get("execution") or {}, new.get("execution") or {}
            reasons.append(f"world size {before.get('world_size', '-')} → {after.get('world_size', '-')}")
    if not reasons and not own_only:
        reasons.append("upstream or inputs changed" if logged else "cache key changed")
    return reasons


__all__ = ["KEY_ARTIFACT", "RECORD_VERSION", "key_record", "record_from_run", "why_changed"]
