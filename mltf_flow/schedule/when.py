"""When a schedule fires: a period from a start time, or a cron expression (croniter's five-field grammar).

Slots are computed, never accumulated: a fire that started late (a busy queue) still schedules the next
slot of the grid, and slots missed while nothing ran (the machine was down) are not fired one by one: the
next fire runs once and, being a cached pipeline, redoes only what is stale. Date-partitioned pipelines
that need one run per missed day use Luigi's own ``RangeDaily``/``RangeHourly`` as their target
(docs/scheduling.md).

Times are local to the host that computes them, as cron and ``sbatch --begin`` read them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime

from mltf_flow.config.units import duration_seconds
from mltf_flow.errors import ConfigError

#: The shortest period: a fire costs a second or two even when nothing is stale, and SLURM's scheduler
#: starts a held job up to a few seconds late.
MIN_PERIOD_S = 10.0
_CRON_HINT = "five fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *' for 02:00 every night"


@dataclass(frozen=True)
class When:
    """Either ``every_s`` (seconds, from ``start``) or ``cron``."""

    every_s: float | None = None
    cron: str | None = None
    #: Unix time of the first slot of a period schedule.
    start: float = 0.0

    @classmethod
    def parse(cls, *, every: str | None, cron: str | None, start: str | None, now: float) -> When:
        """From ``schedule add``'s ``--every``/``--cron``/``--start``; a ConfigError says what was wrong."""
        if (every is None) == (cron is None):
            raise ConfigError("schedule add needs exactly one of --every (a period such as 1d, 6h, 30m) and "
                              f"--cron (a cron expression, {_CRON_HINT}).")
        if cron is not None:
            if start is not None:
                raise ConfigError("--start is for --every: a cron expression names its own times.")
            return cls(cron=_checked_cron(cron))
        assert every is not None
        try:
            seconds = duration_seconds(every)
        except ValueError:
            raise ConfigError(f"--every {every!r}: expected a period with a unit, such as 1d, 6h, 30m or "
                              "1m.") from None
        if seconds < MIN_PERIOD_S:
            raise ConfigError(f"--every {every!r} is shorter than {MIN_PERIOD_S:.0f}s: a fire costs a second or "
                              "two even when nothing is stale. Use a longer period.")
        return cls(every_s=seconds, start=_start(start, now))

    def next_slot(self, after: float) -> float:
        """The first slot strictly after ``after`` (Unix time)."""
        if self.cron is not None:
            from croniter import croniter

            return float(croniter(self.cron, datetime.fromtimestamp(after)).get_next(float))
        assert self.every_s is not None
        if after < self.start:
            return self.start
        return self.start + (math.floor((after - self.start) / self.every_s) + 1) * self.every_s

    def slot_at(self, now: float) -> float:
        """The latest slot at or before ``now``: the slot a fire that runs at ``now`` stands for."""
        if self.cron is not None:
            from croniter import croniter

            return float(croniter(self.cron, datetime.fromtimestamp(now + 1)).get_prev(float))
        assert self.every_s is not None
        if now < self.start:
            return self.start
        return self.start + math.floor((now - self.start) / self.every_s) * self.every_s

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron '{self.cron}'"
        assert self.every_s is not None
        return f"every {_period(self.every_s)} from {stamp(self.start)}"

    def cron_expression(self, via: str) -> str:
        """The cron expression of this schedule, for cron and scrontab (which only know cron's grid)."""
        if self.cron is not None:
            return self.cron
        assert self.every_s is not None
        minutes, rest = divmod(self.every_s, 60)
        start = datetime.fromtimestamp(self.start)
        if rest == 0 and minutes < 60 and 60 % minutes == 0:
            first = start.minute % int(minutes)
            return f"{first}-59/{int(minutes)} * * * *" if minutes > 1 else "* * * * *"
        hours, rest_h = divmod(minutes, 60)
        if rest_h == 0 and hours < 24 and 24 % hours == 0:
            return f"{start.minute} {start.hour % int(hours)}-23/{int(hours)} * * *"
        if minutes == 24 * 60:
            return f"{start.minute} {start.hour} * * *"
        if minutes == 7 * 24 * 60:
            return f"{start.minute} {start.hour} * * {(start.weekday() + 1) % 7}"
        raise ConfigError(f"--every {_period(self.every_s)} has no cron expression ({via} fires on cron's grid: "
                          "minutes dividing an hour, hours dividing a day, 1d or 7d). Give --cron instead, or "
                          "use --via slurm, which fires any period.")


def _checked_cron(expression: str) -> str:
    from croniter import croniter

    text = " ".join(expression.split())
    if len(text.split()) != 5 or not croniter.is_valid(text):
        raise ConfigError(f"--cron {expression!r} is not a cron expression: expected {_CRON_HINT}.")
    return text


def _start(text: str | None, now: float) -> float:
    if text is None or text == "now":
        return float(math.floor(now))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(f"--start {text!r}: expected a local time like 2026-12-07T02:00 (or 'now').") from None


def _period(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def stamp(when: float) -> str:
    """A slot as people and ``sbatch --begin`` read it: local time to the second (2026-12-06T02:00:00)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when))
