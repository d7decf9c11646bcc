"""A profile's ``rucio:`` section, checked (keys and meanings: :mod:`mltf_flow.staging.rucio`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mltf_flow.errors import ConfigError

MODES = ("rule", "download")
VERIFY = ("full", "sample", "off")
_KEYS = ("rse_expression", "mode", "lifetime", "activity", "grouping", "pfn_map", "verify", "sample_files",
         "timeout", "stuck_grace", "poll_max", "download_dir", "source_rse_expression")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")


@dataclass(frozen=True)
class RucioSettings:
    """A profile's ``rucio:`` section, checked."""

    rse_expression: str | None = None
    mode: str = "rule"
    lifetime: float | None = 30 * 86400.0
    activity: str | None = None
    grouping: str = "DATASET"
    pfn_map: tuple[tuple[str, str], ...] = ()
    verify: str = "full"
    sample_files: int = 8
    timeout: float = 6 * 3600.0
    stuck_grace: float = 1800.0
    poll_max: float = 60.0
    download_dir: str | None = None
    source_rse_expression: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def _seconds(value: Any, key: str, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.match(str(value).strip())
    if not match:
        raise ConfigError(f"{where}: rucio {key}: expected seconds or a duration like 30m, 6h, 7d; found {value!r}.")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def rucio_settings(section: Mapping[str, Any] | None, where: str = "profile") -> RucioSettings:
    """Check a profile's ``rucio`` section (``where`` names its origin in errors)."""
    if section is None:
        return RucioSettings()
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: key 'rucio': expected a mapping (rse_expression: ..., mode: rule), "
                          f"found {section!r}.")
    unknown = sorted(set(section) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: rucio: unknown key(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}.")
    values: dict[str, Any] = {}
    for key in ("rse_expression", "activity", "download_dir", "source_rse_expression"):
        if section.get(key) is not None:
            if not isinstance(section[key], str) or not section[key].strip():
                raise ConfigError(f"{where}: rucio {key}: expected a non-empty string, found {section[key]!r}.")
            values[key] = section[key].strip()
    mode = section.get("mode", "rule")
    if mode not in MODES:
        raise ConfigError(f"{where}: rucio mode {mode!r}: expected one of {', '.join(MODES)}.")
    values["mode"] = mode
    verify = section.get("verify", "full")
    if verify not in VERIFY:
        raise ConfigError(f"{where}: rucio verify {verify!r}: expected full, sample or off (size only).")
    values["verify"] = verify
    grouping = section.get("grouping", "DATASET")
    if grouping not in ("DATASET", "ALL", "NONE"):
        raise ConfigError(f"{where}: rucio grouping {grouping!r}: expected DATASET, ALL or NONE.")
    values["grouping"] = grouping
    for key in ("lifetime", "timeout", "stuck_grace", "poll_max"):
        if key in section:
            values[key] = None if (key == "lifetime" and section[key] is None) else _seconds(section[key], key, where)
    sample = section.get("sample_files", 8)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ConfigError(f"{where}: rucio sample_files: expected a whole number >= 1, found {sample!r}.")
    values["sample_files"] = sample
    pfn_map = section.get("pfn_map") or {}
    if not isinstance(pfn_map, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in pfn_map.items()):
        raise ConfigError(f"{where}: rucio pfn_map: expected a mapping of PFN prefix -> local path prefix.")
    # Longest prefix first: a more specific mapping wins.
    values["pfn_map"] = tuple(sorted(pfn_map.items(), key=lambda kv: -len(kv[0])))
    return RucioSettings(**values)
