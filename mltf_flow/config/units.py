"""Durations, sizes, SLURM time limits and SLURM memory in configuration values: the one parser of each.

Durations and sizes follow Dask's grammar (``dask.utils.parse_timedelta`` / ``parse_bytes``, with the
same unit tables): the values go to Dask (a worker's ``--lifetime``, a job's ``memory``), so they must
mean there what they mean here. The grammar is restated rather than imported because ``import
dask.utils`` costs 0.2 s and profiles are resolved on the light paths (``complete()``, job planning) that
must not import Dask; ``tests/unit/config/test_units.py`` checks it against Dask's functions. Two rules are
stricter than Dask: a unit is required (a bare ``4`` is 4 bytes or 4 seconds to Dask, never what a
profile means) and so is a leading number. SLURM's time format (``D-H:M:S`` ...) is SLURM's own, and so is
its ``--mem`` (``16G`` is 16 GiB there, 16*10^9 bytes to Dask; a bare number is megabytes): the backend
config (:mod:`mltf_flow.config.backend`) takes both as sbatch does, a profile takes Dask's sizes.

The annotated types (:data:`Duration`, :data:`Seconds`, :data:`Interval`, :data:`Timeout`, :data:`Size`,
:data:`Walltime`, :data:`TimeLimit`, :data:`SlurmMemory`) are what the models in this package declare; their
messages say what is expected.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from mltf_flow.config.fields import Before

#: dask.utils.timedelta_sizes (lower-case keys; Dask also accepts the upper-case spellings).
_TIME_UNITS = {
    "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "m": 60, "h": 3600, "d": 86400, "w": 604800,
    "second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800, "millisecond": 1e-3,
    "microsecond": 1e-6, "nanosecond": 1e-9,
}
_TIME_UNITS.update({f"{unit}s": factor for unit, factor in list(_TIME_UNITS.items()) if len(unit) > 2})
#: dask.utils.byte_sizes without the empty unit.
_BYTE_UNITS = {
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15, "kib": 2**10, "mib": 2**20, "gib": 2**30,
    "tib": 2**40, "pib": 2**50, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15, "ki": 2**10,
    "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50,
}
# A number (as float() reads it, Dask's prefix) and a unit of letters; Dask removes spaces first.
_NUMBER_UNIT = re.compile(r"^(\d[\d.eE+-]*?)([A-Za-z]+)$")
# SLURM time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
# SLURM's --mem: a number and an optional unit (sbatch also takes a trailing B: 16GB is 16G).
_SLURM_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_UNLIMITED = ("UNLIMITED", "INFINITE")
_WALLTIME = re.compile(r"^(?:(\d+)-(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?|(?:(\d+):)?(\d+):(\d{1,2})|(\d+))$")

DURATION_HINT = ("a duration like '55m', '4m', '1h' or '30s' (a number and a unit, no space: it is written "
                 "unquoted into the worker's command line)")
SIZE_HINT = "a size like '4GB' or '16GiB'"
WALLTIME_HINT = 'a quoted SLURM time like "02:00:00" or "1-00:00:00"'
TIME_LIMIT_HINT = 'a SLURM time limit like "00:30:00", "1-00:00:00", minutes, or "UNLIMITED"'
SLURM_MEMORY_HINT = 'SLURM memory per node like "16G" or "4000M"'
TIMEOUT_HINT = 'a duration like 90s, 30m or 2h, a clock time like "01:30:00", or seconds above zero'


def _split(text: str, units: dict[str, float] | dict[str, int]) -> tuple[float, float]:
    match = _NUMBER_UNIT.match(text.replace(" ", ""))
    if not match or match.group(2).lower() not in units:
        raise ValueError(text)
    try:
        return float(match.group(1)), units[match.group(2).lower()]
    except ValueError:
        raise ValueError(text) from None


def duration_seconds(text: str) -> float:
    """Seconds in a duration (``55m``, ``1.5h``, ``30 s``, ``2d``): Dask's ``parse_timedelta`` with a unit."""
    number, factor = _split(text, _TIME_UNITS)
    return number * factor


def size_bytes(text: str) -> int:
    """Bytes in a size (``4GB`` = 4*10^9, ``16GiB`` = 16*2^30): Dask's ``parse_bytes`` with a unit."""
    number, factor = _split(text, _BYTE_UNITS)
    return int(number * factor)


def walltime_seconds(value: str) -> int:
    """Seconds in a SLURM time limit (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``)."""
    match = _WALLTIME.match(value.strip())
    if not match:
        raise ValueError(value)
    g = [int(x) if x else 0 for x in match.groups()]
    if match.group(1) is not None:  # D-H[:M[:S]]
        return ((g[0] * 24 + g[1]) * 60 + g[2]) * 60 + g[3]
    if match.group(8) is not None:  # minutes only
        return g[7] * 60
    return (g[4] * 60 + g[5]) * 60 + g[6]  # [H:]M:S


def time_limit_seconds(value: str) -> int | None:
    """Seconds in a SLURM time limit as ``sbatch --time`` takes it; None for UNLIMITED/INFINITE."""
    return None if value.strip().upper() in _UNLIMITED else walltime_seconds(value)


def _duration(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str) and " " not in value.strip():
        try:
            duration_seconds(value)
        except ValueError:
            pass
        else:
            return value.strip()
    raise ValueError(f"expected {DURATION_HINT}, found {value!r}.")


def _seconds(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        try:
            return duration_seconds(value)
        except ValueError:
            pass
    raise ValueError(f"expected seconds or a duration like 30m, 6h, 7d; found {value!r}.")


def _interval(value: Any) -> Any:
    try:
        seconds = _seconds(value)
    except ValueError:
        seconds = 0.0
    if seconds > 0:
        return seconds
    raise ValueError(f"expected seconds above zero, or a duration like 10s or 2m; found {value!r}.")


def timeout_seconds(value: Any) -> float:
    """Seconds in a step's timeout: a duration (``90s``, ``2h``: :func:`duration_seconds`), a clock time
    (``"01:30:00"``: :func:`walltime_seconds`, as the profile's walltime it must fit in is written) or a
    number of seconds (YAML reads an unquoted ``01:30:00`` as the number 5400: the same seconds). Above zero;
    raises ``ValueError`` with the message the user sees."""
    if isinstance(value, str) and ":" in value:
        try:
            seconds = float(walltime_seconds(value))
        except ValueError:
            seconds = 0.0
    else:
        try:
            seconds = float(_interval(value))
        except ValueError:
            seconds = 0.0
    if 0 < seconds < math.inf:
        return seconds
    raise ValueError(f"expected {TIMEOUT_HINT}, found {value!r}.")


def clock(seconds: float) -> str:
    """Seconds as messages show them: ``"45s"`` below a minute, else ``"01:30:00"`` (walltime's form).

    >>> clock(2.5), clock(5400), clock(90000)
    ('2.5s', '01:30:00', '25:00:00')
    """
    if seconds < 60:
        return f"{seconds:g}s"
    whole = round(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _size(value: Any) -> Any:
    if isinstance(value, str):
        try:
            size_bytes(value)
        except ValueError:
            pass
        else:
            return value.strip()
    raise ValueError(f"expected {SIZE_HINT}, found {value!r}.")


def _walltime(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            f"is the number {value} (YAML reads an unquoted 10:00:00 as sexagesimal 36000). "
            'Quote it: walltime: "10:00:00".'
        )
    if isinstance(value, str) and _WALLTIME.match(value.strip()):
        return value
    raise ValueError(f"expected {WALLTIME_HINT}, found {value!r}.")


def _time_limit(value: Any) -> Any:
    if isinstance(value, int | str) and not isinstance(value, bool):  # a number is minutes, as sbatch reads it
        try:
            seconds = time_limit_seconds(str(value))
        except ValueError:
            pass
        else:
            if seconds == 0:  # SLURM reads --time=0 as "no limit": never what a zero meant
                raise ValueError(f"expected {TIME_LIMIT_HINT} (above zero), found {value!r}.")
            return str(value).strip()
    raise ValueError(f"expected {TIME_LIMIT_HINT}, found {value!r}.")


def _slurm_memory(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return f"{value}M"  # SLURM's default unit
    if isinstance(value, str) and (mem := _SLURM_MEM.match(value.strip())) and int(mem.group(1)) > 0:
        return mem.group(1) + mem.group(2).upper()
    raise ValueError(f"expected {SLURM_MEMORY_HINT}, found {value!r}.")


#: A duration kept as written (spaces removed), e.g. a worker's ``--lifetime 55m``.
Duration = Annotated[str, Before(_duration)]
#: Seconds, from a number or a duration string (``30m`` -> 1800.0).
Seconds = Annotated[float, Before(_seconds)]
#: Seconds above zero, from a number or a duration string (``2m`` -> 120.0).
Interval = Annotated[float, Before(_interval)]
#: Seconds above zero from a duration, a clock time or a number (``2h`` -> 7200.0, ``"01:30:00"`` -> 5400.0).
Timeout = Annotated[float, Before(timeout_seconds)]
#: A size kept as written, e.g. a job's ``memory: 4GB``.
Size = Annotated[str, Before(_size)]
#: A SLURM time limit kept as written (quoted in YAML).
Walltime = Annotated[str, Before(_walltime)]
#: A SLURM time limit as ``sbatch --time`` takes it (a number is minutes, ``UNLIMITED``), as text.
TimeLimit = Annotated[str, Before(_time_limit)]
#: SLURM's ``--mem`` (a number is megabytes): ``16g`` -> ``16G``, ``4000`` -> ``4000M``. None: not given (a
#: given null is refused).
SlurmMemory = Annotated[str | None, Before(_slurm_memory)]
