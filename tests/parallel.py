"""The suite on two processes (pytest-xdist; ``make test`` runs ``pytest -n 2``): which tests must share a
process, and in what order the work is handed out. A scheduler of our own (``pytest_xdist_make_scheduler``):
xdist's ``loadgroup`` renames node ids, which pytest 9 no longer lets a plugin do.

* A file's tests stay together (its module fixtures, e.g. the fault suite's kill chain, are built once).
* Every file with tests of a one-per-machine environment (``slurm``: the single node's CPUs and its queue;
  ``cron``: the user's crontab), and every file that uses them without a marker (the docs' tested snippets of
  pages with SLURM blocks, which run under ``-E slurm``), runs in one process, one test after the other, as in a serial
  run: tests that count SLURM jobs, wait for a node or own the crontab never meet another such test.
* Every file with ``rucio`` tests shares one process, so the Rucio test server starts once.

The machine group is handed out first (the longest unit; the other process works through the rest alongside
it), then the longest files of the rest (:data:`LONGEST`). Without ``-n`` nothing here applies.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

#: Environments a machine has one of: their tests never run two at a time.
ONE_PER_MACHINE = ("slurm", "cron")
#: Files that use a one-per-machine environment without carrying its marker.
USES_THE_MACHINE = frozenset({"tests/integration/test_docs_snippets_machine.py"})
TESTS = Path(__file__).parent
#: The files that take longest outside the machine group (a study of trainings; the kill chain; FSDP's pipeline;
#: the README's and docs' tested snippets).
LONGEST = frozenset({"tests/integration/test_tune.py", "tests/faults/test_kills.py", "tests/integration/test_fsdp.py",
                     "tests/integration/test_docs_snippets.py"})


@cache
def marked_files(*environments: str) -> frozenset[str]:
    """Test files (relative to the repository) that mark tests with one of ``environments``, read as text: the
    controller process schedules before, and without, collecting anything."""
    return frozenset(
        str(path.relative_to(TESTS.parent)) for path in sorted(TESTS.rglob("test_*.py"))
        if any(f"mark.{env}" in path.read_text(encoding="utf-8") for env in environments)
    )


def machine_files() -> frozenset[str]:
    return marked_files(*ONE_PER_MACHINE) | USES_THE_MACHINE


def scope(nodeid: str) -> str:
    """The unit of work a test belongs to: ``machine``, ``rucio`` or its file."""
    file = nodeid.split("::", 1)[0]
    if file in machine_files():
        return "machine"
    if file in marked_files("rucio"):
        return "rucio"
    return file


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByScope(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return scope(nodeid)

    return ByScope(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # not a pytest-xdist worker
        return
    # The text search above must have found every marked test: else two SLURM tests could meet.
    missed = sorted({item.nodeid.split("::", 1)[0] for item in items
                     if any(item.get_closest_marker(env) for env in ONE_PER_MACHINE)} - machine_files())
    if missed:
        raise pytest.UsageError(f"tests/parallel.py does not see the SLURM/cron tests of {', '.join(missed)}: "
                                "mark them with pytest.mark.<env> in the file, or list the file in USES_THE_MACHINE")
    # Stable: the machine group first, then the longest files (handed out early, they do not end the run alone).
    items.sort(key=lambda item: (scope(item.nodeid) != "machine", item.nodeid.split("::", 1)[0] not in LONGEST))
