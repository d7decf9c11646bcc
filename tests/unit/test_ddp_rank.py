"""The training-script helpers of mltf_flow.ddp: rank queries from the torchrun variables, rank-0-only calls,
and a process group set up from the environment (a single gloo process here)."""

from __future__ import annotations

import pytest

from mltf_flow import ddp


def test_ranks_come_from_the_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (ddp.rank(), ddp.world_size(), ddp.local_rank(), ddp.is_rank_zero()) == (0, 1, 0, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (ddp.rank(), ddp.world_size(), ddp.local_rank(), ddp.is_rank_zero()) == (3, 4, 1, False)

    @ddp.rank_zero_only
    def log(value: int) -> int:
        return value * 2

    assert log(21) is None
    monkeypatch.setenv("RANK", "0")
    assert log(21) == 42


def test_single_process_group_without_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    import torch.distributed as dist

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    try:
        assert ddp.init_process_group() == "gloo"  # no GPU here
        assert dist.is_initialized() and dist.get_world_size() == 1
        assert ddp.init_process_group() == "gloo"  # a second call joins nothing new
    finally:
        ddp.destroy_process_group()
    assert not dist.is_initialized()


def test_several_ranks_need_a_master_port(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="MASTER_PORT is not set"):
        ddp.init_process_group("gloo")
