"""Reading configuration files: YAML mappings, parsed once per process per version of the file.

Settings and profiles are resolved at many call sites per process (every ``complete()`` of a cached rerun),
and parsing YAML was most of a cached rerun's time. A file is parsed again only when its (path, size,
mtime) changes; :func:`stamp` is that identity, also used to key resolved results (settings, profiles).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mltf_flow.errors import ConfigError

# libyaml's loader parses ~10x faster than the pure-Python one (a cached rerun reads a handful of files);
# the pure-Python one stands in where PyYAML was built without libyaml.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: (path, size, mtime_ns) of a file, or (path, None, None) when it does not exist.
Stamp = tuple[str, int | None, int | None]
_PARSED: dict[Stamp, dict[str, Any]] = {}


def stamp(path: Path) -> Stamp:
    """What identifies this version of ``path`` (an edited file has another size or mtime)."""
    try:
        st = path.stat()
    except OSError:
        return (str(path), None, None)
    return (str(path), st.st_size, st.st_mtime_ns)


def load_yaml(text: str) -> Any:
    """YAML text as Python values (safe: plain data only); raises :class:`yaml.YAMLError`."""
    return yaml.load(text, Loader=_LOADER)  # a safe loader: CSafeLoader or SafeLoader


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where (line, column) and what, not PyYAML's several lines about
    ``"<unicode string>"`` (the caller names the file)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"not valid YAML{where}: {problem}" + (f" ({context})" if context else "")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (empty file: empty mapping); errors name the file."""
    key = stamp(path)
    if key[1] is not None and key in _PARSED:
        return copy.deepcopy(_PARSED[key])
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}. Fix the file or remove it.") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(data).__name__}.")
    if key[1] is not None:
        _PARSED[key] = copy.deepcopy(data)
    return data
