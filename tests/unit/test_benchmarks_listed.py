"""Every file in benchmarks/ is either a benchmark `make bench` runs or a helper it must not run
(benchmarks/run_all.py lists both): a new benchmark cannot be left out of the summary table unnoticed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all", BENCHMARKS / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_script_is_listed() -> None:
    assert runner().unlisted() == []


def test_helpers_are_not_benchmarks() -> None:
    # (A listed name need not exist on every branch: helpers come with the benchmarks other branches add.)
    run_all = runner()
    assert not {b.script for b in run_all.BENCHMARKS} & set(run_all.NOT_BENCHMARKS)
