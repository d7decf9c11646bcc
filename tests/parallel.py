"""The suite on two processes (pytest-xdist, ``make test`` runs ``pytest -n 2 --dist loadgroup``): which tests
must share a process, and in what order the work is handed out.

* A file's tests stay together (its module fixtures, e.g. the fault suite's kill chain, are built once).
* Every file with a test of the one-per-machine environments (``slurm``: the single node's CPUs and its queue;
  ``cron``: the user's crontab) runs in one process, one test after the other, as in a serial run: tests that
  count SLURM jobs, wait for a node or own the crontab never meet another such test.
* Every file with ``rucio`` tests shares one process, so the Rucio test server starts once.

The machine group is handed out first: it is the longest unit, and the other process works through the rest
alongside it. Without ``-n`` (a plain ``pytest``) nothing here applies.
"""

from __future__ import annotations

import pytest

#: Environments a machine has one of: their tests never run two at a time.
ONE_PER_MACHINE = ("slurm", "cron")


def _group(item: pytest.Item, machine: set[str], rucio: set[str]) -> str:
    file = str(item.path)
    if file in machine:
        return "machine"
    if file in rucio:
        return "rucio"
    return file


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the markers into the scheduling scope
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # not a pytest-xdist worker
        return
    machine = {str(i.path) for i in items if any(i.get_closest_marker(env) for env in ONE_PER_MACHINE)}
    rucio = {str(i.path) for i in items if i.get_closest_marker("rucio")} - machine
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item, machine, rucio)))
    items.sort(key=lambda i: str(i.path) not in machine)  # stable: the machine group first, the rest in order
