"""Load a run's sharded checkpoint of the example's ``train_fsdp`` model with this process group's world size
(test_fsdp.py runs it as one process and under torchrun with 2) and write the gathered full weights.

    python fsdp_reshard.py PROJECT_DIR RUN_ID=OUT.pt [RUN_ID=OUT.pt ...] [--save-to-run RUN_B]

``--save-to-run``: then save what was loaded (from the first run) as a sharded checkpoint of RUN_B from this
world size, for the way back. Prints ``RUN_ID: loaded epoch N on W ranks; sha256 HEX`` (train_fsdp's digest of
the full weights) on rank 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project", type=Path)
    parser.add_argument("loads", nargs="+", help="RUN_ID=OUT.pt")
    parser.add_argument("--save-to-run")
    args = parser.parse_args()
    sys.path.insert(0, str(args.project))
    import train_fsdp  # the example's model, exactly as the step built it

    from mltf_flow import sharded_checkpoint
    from mltf_flow.ddp.rank import init_process_group

    init_process_group()
    torch.set_num_threads(1)
    model_args = argparse.Namespace(seed=7, dim=32, heads=4, layers=2, parallel="fsdp", precision="fp32")
    for number, load in enumerate(args.loads):
        run_id, out = load.split("=", 1)
        net = train_fsdp.build(model_args, torch.device("cpu"), dist.get_world_size())
        optimiser = torch.optim.Adam(net.parameters(), lr=0.001)
        model_state, optim_state = get_state_dict(net, optimiser)
        state = {"model": model_state, "optim": optim_state}
        epoch = sharded_checkpoint.load_latest_sharded(state, run_id=run_id)
        assert epoch is not None, f"run {run_id} has no checkpoint"
        set_state_dict(net, optimiser, model_state_dict=state["model"], optim_state_dict=state["optim"])
        weights = train_fsdp.full_state(net)
        if dist.get_rank() == 0:
            torch.save(weights, out)
            print(f"{run_id}: loaded epoch {epoch} on {dist.get_world_size()} ranks; "
                  f"sha256 {train_fsdp.weights_sha256(weights)}")
        if number == 0 and args.save_to_run:
            model_state, optim_state = get_state_dict(net, optimiser)
            sharded_checkpoint.save_sharded({"model": model_state, "optim": optim_state}, epoch,
                                            run_id=args.save_to_run)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
