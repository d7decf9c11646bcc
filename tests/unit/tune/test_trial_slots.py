"""A study's trials run on slots of workers; a slot whose worker left the cluster (its SLURM job ended) is never
used again, and the idle workers still there are grouped into new slots (a real Dask scheduler). A trial holds a
slot only while its command runs: more trials are in flight than slots, and they wait for one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mltf_flow.tune.slots import Slot, SlotHold, SlotsClosed, WorkersGone, WorkerSlots


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=3, processes=False, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as dask_client:
        dask_client.wait_for_workers(3)
        yield dask_client


def _slots(client: Any, free: list[Slot], busy: list[Slot], world_size: int = 1,
           stopping: threading.Event | None = None) -> WorkerSlots:
    slots = WorkerSlots(free, client=client, world_size=world_size, study="s", step="train",
                        stopping=stopping or threading.Event())
    slots._busy.extend(busy)
    return slots


def test_a_slot_whose_worker_left_is_dropped_for_idle_live_workers(client: Any) -> None:
    w0, w1, w2 = sorted(client.scheduler_info(n_workers=-1)["workers"])
    slots = _slots(client, [("tcp://127.0.0.1:9",), (w0,)], busy=[(w1,)])
    got = [slots.live_slot(), slots.live_slot()]
    assert got == [(True, (w0,)), (True, (w2,))]  # the dead slot's place taken by the idle w2, never by busy w1
    assert slots.live_slot() == (False, None)


def test_no_slot_when_every_worker_is_busy_or_gone(client: Any) -> None:
    w0, w1, _alone = sorted(client.scheduler_info(n_workers=-1)["workers"])
    slots = _slots(client, [("tcp://127.0.0.1:9", "tcp://127.0.0.1:10")], busy=[(w0, w1)], world_size=2)
    assert slots.live_slot() == (False, None)  # w2 alone: too few


def test_a_driver_steps_slots_need_no_workers(client: Any) -> None:
    assert _slots(client, [None, None], busy=[None]).live_slot() == (True, None)


def test_a_trial_waits_for_a_slot_and_gets_the_one_given_back(client: Any) -> None:
    w0 = sorted(client.scheduler_info(n_workers=-1)["workers"])[0]
    slots = _slots(client, [(w0,)], busy=[])
    first = SlotHold(slots, early=True)  # on SLURM: held from before the run is created
    second = SlotHold(slots, early=False)
    with ThreadPoolExecutor(1) as pool:
        def command() -> Slot:
            with second.command() as slot:
                return slot
        waiting = pool.submit(command)
        assert not waiting.done()  # no result while the only slot is held (checked again below: it was waiting)
        first.release()
        assert waiting.result(timeout=30) == (w0,)
    first.release()  # a second release gives nothing back twice
    assert slots._free == [(w0,)] and slots._busy == []


def test_a_trial_waiting_for_a_slot_gives_up_when_the_study_stops(client: Any) -> None:
    w0 = sorted(client.scheduler_info(n_workers=-1)["workers"])[0]
    stopping = threading.Event()
    slots = _slots(client, [], busy=[(w0,)], stopping=stopping)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(slots.take)
        stopping.set()
        slots.close()
        with pytest.raises(SlotsClosed):
            waiting.result(timeout=30)


def test_no_worker_left_and_none_held_ends_the_study(client: Any) -> None:
    # Its slot's workers left; the three still there are too few for a trial of world size 4.
    slots = _slots(client, [tuple(f"tcp://127.0.0.1:{port}" for port in range(9, 13))], busy=[], world_size=4)
    with pytest.raises(WorkersGone, match="workers of its cluster are gone"):
        slots.take()
