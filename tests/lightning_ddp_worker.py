"""Lightning DDP on 2 CPU processes (gloo) with AutoFreezeLightning; each rank writes what it saw.
Run as a script (Lightning's ddp strategy launches the second process by running it again)."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lightning.pytorch as L  # noqa: E402

from autofreeze_ext import ScheduledFreeze  # noqa: E402
from autofreeze_ext.samplers import ShardedBatchSampler  # noqa: E402
from autofreeze_ext.integrations.lightning import AutoFreezeLightning  # noqa: E402
from test_lightning import DS, Module  # noqa: E402


class Watch(L.Callback):
    """Reads the strategy's DDP before each step (after AutoFreezeLightning, listed before it)."""

    def __init__(self):
        self.start = self.end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.end = ddp_tensors(trainer)
        self.start = self.end if self.start is None else self.start


def ddp_tensors(trainer) -> int:
    """Parameter tensors in the all-reduce of the strategy's DDP."""
    return trainer.strategy.model._get_ddp_logging_data()["num_parameter_tensors"]


def fit(epochs: int, ckpt_path=None, save_to=None, agree: bool = False):
    """One DDP fit of ``epochs`` epochs (from ``ckpt_path``; saving the last checkpoint to ``save_to``);
    ``agree``: every rank runs rank 0's policy (a resume refuses a policy other than the checkpoint's)."""
    torch.manual_seed(0)
    # the ranks' policies disagree (rank 1's would never freeze): rank 0's decision must reach both
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    policy = ScheduledFreeze([(3, 2)] if rank == 0 or agree else [(10 ** 6, 2)])
    cb, watch = AutoFreezeLightning(policy, cache=True), Watch()
    # the cache's rows stay on their rank (Lightning's DistributedSampler would deal them anew each epoch)
    sampler = ShardedBatchSampler(len(DS()), 16, world_size=2, rank=rank, seed=0)
    t = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=2, strategy="ddp", callbacks=[cb, watch],
                  logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                  use_distributed_sampler=False)
    t.fit(Module(use_cache=True, dropout=0.0), torch.utils.data.DataLoader(DS(), batch_sampler=sampler),
          ckpt_path=ckpt_path)
    if save_to:
        t.save_checkpoint(save_to)
    return t, cb, watch


def main(out: str) -> None:
    t, cb, watch = fit(3)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{t.global_rank}.json"), "w") as f:
        json.dump({"history": [h for h in cb.controller.history if h["event"] == "freeze"],
                   "depth": cb.controller.frozen_depth, "ddp_params_start": watch.start,
                   "ddp_params_end": watch.end, "cache": cb.cache.counters()}, f)


def resumed(out: str) -> None:
    """Three epochs, then a fourth resumed from their checkpoint: each rank's counts of both fits."""
    os.makedirs(out, exist_ok=True)
    ckpt = os.path.join(out, "last.ckpt")
    t, first, _ = fit(3, save_to=ckpt, agree=True)
    _, second, _ = fit(4, ckpt_path=ckpt, agree=True)
    with open(os.path.join(out, f"resumed_rank{t.global_rank}.json"), "w") as f:
        json.dump({"first": first.cache_counters, "second_alone": second.cache.counters(),
                   "second": second.cache_counters}, f)


if __name__ == "__main__":
    (resumed if sys.argv[2:] == ["resume"] else main)(sys.argv[1])
