"""The one line each benchmark prints per measured goal, read by ``make bench`` (benchmarks/run_all.py).

A benchmark measures its figure and its baseline in the same run (these machines are shared and noisy: only
the ratio means something) and reports it with :func:`report`::

    report("cached rerun vs bare Luigi", ratio, goal=1.5, better="lower",
           detail="412 ms vs 301 ms, median of 9")

which prints a human line and a machine line ``BENCH {json}``. The summary table of ``make bench`` is built
from the ``BENCH`` lines of every script's output; nothing else in the output is parsed.
"""

from __future__ import annotations

import json
from typing import Literal

PREFIX = "BENCH "


def met(value: float, goal: float, better: Literal["lower", "higher"]) -> bool:
    return value <= goal if better == "lower" else value >= goal


def report(metric: str, value: float, *, goal: float, better: Literal["lower", "higher"], unit: str = "x",
           detail: str = "") -> None:
    """Print one measured goal: ``value`` against ``goal`` (``better``: which side meets it)."""
    ok = met(value, goal, better)
    sign = "<=" if better == "lower" else ">="
    print(f"{metric}: {value:.3g}{unit} (goal {sign} {goal:g}{unit}) -> {'OK' if ok else 'MISSED'}"
          + (f"  [{detail}]" if detail else ""), flush=True)
    print(PREFIX + json.dumps({"metric": metric, "value": value, "goal": goal, "better": better, "unit": unit,
                               "met": ok, "detail": detail}), flush=True)
