"""A study's trials run on slots of workers; a slot whose worker left the cluster (its SLURM job ended) is never
used again, and the idle workers still there are grouped into new slots (a real Dask scheduler)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from mltf_flow.tune.study import _Driver


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=3, processes=False, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as dask_client:
        dask_client.wait_for_workers(3)
        yield dask_client


def _driver(client: Any, world_size: int = 1) -> _Driver:
    driver = _Driver.__new__(_Driver)  # only its slot bookkeeping is exercised here
    driver.context = SimpleNamespace(cluster=SimpleNamespace(client=client), study_name="s",  # type: ignore[assignment]
                                     base=SimpleNamespace(world_size=world_size, name="train"))
    return driver


def test_a_slot_whose_worker_left_is_dropped_for_idle_live_workers(client: Any) -> None:
    w0, w1, w2 = sorted(client.scheduler_info(n_workers=-1)["workers"])
    driver = _driver(client)
    free: list[tuple[str, ...] | None] = [("tcp://127.0.0.1:9",), (w0,)]
    got = [driver._live_slot(free, busy=[(w1,)]), driver._live_slot(free, busy=[(w1,)])]
    assert got == [(True, (w0,)), (True, (w2,))]  # the dead slot's place taken by the idle w2, never by busy w1
    assert driver._live_slot(free, busy=[(w1,)]) == (False, None)


def test_no_slot_when_every_worker_is_busy_or_gone(client: Any) -> None:
    w0, w1, _alone = sorted(client.scheduler_info(n_workers=-1)["workers"])
    free: list[tuple[str, ...] | None] = [("tcp://127.0.0.1:9", "tcp://127.0.0.1:10")]
    assert _driver(client, world_size=2)._live_slot(free, busy=[(w0, w1)]) == (False, None)  # w2 alone: too few


def test_a_driver_steps_slots_need_no_workers(client: Any) -> None:
    assert _driver(client)._live_slot([None, None], busy=[None]) == (True, None)
