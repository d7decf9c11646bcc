"""A profile's ``rucio:`` section (how ``rucio://`` datasets are staged here), typed and checked at load.

Meanings are in :mod:`mltf_flow.staging.rucio`. Durations are seconds or Dask-style strings (``30m``,
``6h``, ``7d``: :mod:`mltf_flow.config.units`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from mltf_flow.config.fields import Before, Ge, StrictInt
from mltf_flow.config.schema import Schema, validate
from mltf_flow.config.units import Seconds

MODES = ("rule", "download")
VERIFY = ("full", "sample", "off")


def _text(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"expected a non-empty string, found {value!r}.")


def _pfn_map(value: Any) -> Any:
    value = value or {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("expected a mapping of PFN prefix -> local path prefix.")
    return tuple(sorted(value.items(), key=lambda kv: -len(kv[0])))  # longest prefix first: the most specific wins


Text = Annotated[str | None, Before(_text)]


@dataclass(frozen=True, kw_only=True)
class RucioSettings(Schema):
    """The ``rucio:`` section."""

    section: ClassVar[str] = "rucio"
    shape: ClassVar[str] = "rse_expression: ..., mode: rule"
    expect: ClassVar[dict[str, str]] = {"verify": "full, sample or off (size only)",
                                        "grouping": "DATASET, ALL or NONE", "sample_files": "a whole number >= 1"}

    rse_expression: Text = None
    mode: Literal["rule", "download"] = "rule"
    lifetime: Seconds | None = 30 * 86400.0
    activity: Text = None
    grouping: Literal["DATASET", "ALL", "NONE"] = "DATASET"
    pfn_map: Annotated[tuple[tuple[str, str], ...], Before(_pfn_map)] = ()
    verify: Literal["full", "sample", "off"] = "full"
    sample_files: Annotated[StrictInt, Ge(1)] = 8
    timeout: Seconds = 6 * 3600.0
    stuck_grace: Seconds = 1800.0
    poll_max: Seconds = 60.0
    download_dir: Text = None
    source_rse_expression: Text = None


def rucio_settings(section: RucioSettings | Mapping[str, Any] | None, where: str = "profile") -> RucioSettings:
    """A profile's ``rucio`` section as settings (a mapping is checked; ``where`` names it in errors)."""
    if isinstance(section, RucioSettings):
        return section
    return RucioSettings() if section is None else validate(RucioSettings, section, where)
