"""Resolved configuration remembered across invocations, keyed by the contents of what it was made from.

Checking files with pydantic costs more than a cached rerun may spend (importing pydantic alone is ~25 ms
against a ~150 ms bare ``luigi`` run), yet the files rarely change between two invocations. So the
validated value (plain dataclasses, :mod:`mltf_flow.config.schema`) is pickled under
``$XDG_CACHE_HOME/mltf_flow/config`` (default ``~/.cache``), named by a hash of every input: the files'
*contents* (not their mtimes, which two writes in one clock tick share), the variables and arguments that
took part, the working directory, and the version of the code that validated them. A changed input is
another name, so an entry is never stale; the warnings the validation gave are stored with it and given
again, so a typo keeps being reported. Errors are not remembered: a bad file fails every time. When the
directory cannot be written the value is simply computed each time.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
#: Entries kept; the oldest are removed beyond this (each is a few KiB).
KEEP = 200
_PACKAGE = Path(__file__).resolve().parent.parent
# The code whose behaviour a remembered value depends on: a changed file here is another version.
_CODE = ("config", "clusters/profiles.py", "staging/uri.py", "defaults.yaml", "profiles.yaml")
_CODE_VERSION: list[str] = []


def cache_dir() -> Path:
    """Where remembered values live."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mltf_flow" / "config"


def remembered(kind: str, files: Iterable[Path], context: Iterable[Any], compute: Callable[[], T]) -> T:
    """``compute()``, or the value it gave before for the same ``files`` (contents) and ``context``."""
    where = f"{os.getcwd()}\0{os.path.expanduser('~')}"
    digest = hashlib.sha256(f"{kind}\0{_code_version()}\0{where}\0{context_text(context)}".encode())
    for path in files:
        digest.update(f"\0{path}\0".encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"\0(missing)")
    entry = cache_dir() / f"{kind}-{digest.hexdigest()[:40]}.pickle"
    found = _load(entry)
    if found is not None:
        value, said = found
        _say(said)
        return value  # type: ignore[no-any-return]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = compute()
    said = [(w.category, str(w.message)) for w in caught]
    _say(said)
    _store(entry, (value, said))
    return value


def context_text(context: Iterable[Any]) -> str:
    return "\0".join(repr(item) for item in context)


def _code_version() -> str:
    if not _CODE_VERSION:
        parts = [sys.version.split()[0]]
        for name in _CODE:
            path = _PACKAGE / name
            for item in sorted(path.glob("*.py")) if path.is_dir() else [path]:
                st = item.stat()
                parts.append(f"{item.relative_to(_PACKAGE)}:{st.st_size}:{st.st_mtime_ns}")
        _CODE_VERSION.append(hashlib.sha256("\0".join(parts).encode()).hexdigest())
    return _CODE_VERSION[0]


def _say(said: list[tuple[type[Warning], str]]) -> None:
    for category, message in said:
        warnings.warn(message, category, stacklevel=4)


def _load(entry: Path) -> tuple[Any, list[tuple[type[Warning], str]]] | None:
    try:
        with entry.open("rb") as handle:
            loaded = pickle.load(handle)  # our own cache directory (mode 0700), written by _store
    except Exception:  # missing, truncated, or pickled by another version: computed again and replaced
        return None
    if not isinstance(loaded, tuple) or len(loaded) != 2:
        return None
    return loaded


def _store(entry: Path, payload: tuple[Any, list[tuple[type[Warning], str]]]) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-")
    except OSError:
        return  # not remembered: computed again next time
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, entry)
        _prune(entry.parent)
    except (OSError, pickle.PicklingError):
        Path(tmp).unlink(missing_ok=True)


def _prune(directory: Path) -> None:
    entries = sorted(directory.glob("*.pickle"), key=lambda p: p.stat().st_mtime_ns)
    for old in entries[:-KEEP]:
        old.unlink(missing_ok=True)
