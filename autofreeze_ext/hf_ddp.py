"""What :class:`~autofreeze_ext.hf_trainer.AutoFreezeTrainer` needs under several processes.

* :class:`RankStableSampler`: each rank keeps the same samples for the whole run (a fixed
  shard, reshuffled within itself every epoch), so each rank's activation cache holds exactly
  the samples that rank will see again. It yields one flat order that ``accelerate``'s
  batch sharding (batch *k* goes to rank *k mod world*) cuts back into the shards.
* :func:`all_reduce_gradients`: the data-parallel gradient average of the trainable
  parameters. The cached training forward runs the model's parts directly, not through the
  ``DistributedDataParallel`` wrapper, so DDP's own hooks never fire; this is the same average
  DDP computes, done once per optimizer update, before clipping, over the *active* parameters
  only (frozen blocks cost no communication).
"""
from __future__ import annotations

from typing import Iterator, List, Optional

import torch
import torch.distributed as dist


class RankStableSampler(torch.utils.data.Sampler):
    """Indices for ``world`` ranks taking per-device batches of ``batch_size`` in turn, each
    rank's from its own fixed shard (``range(rank, n, world)``), reshuffled every epoch.

    Each shard is padded with its own first samples of the epoch to a whole number of batches
    and to the longest shard's length (as ``DistributedSampler`` pads), so the cut stays aligned.
    """

    def __init__(self, num_samples: int, world: int, batch_size: int, seed: int = 0) -> None:
        if num_samples < world:
            raise ValueError(f"RankStableSampler: {num_samples} samples cannot feed {world} ranks")
        self.n, self.world, self.batch, self.seed, self.epoch = num_samples, world, batch_size, seed, 0
        longest = -(-num_samples // world)
        self.batches_per_rank = -(-longest // batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shard(self, rank: int) -> List[int]:
        """Rank ``rank``'s samples for the whole run."""
        return list(range(rank, self.n, self.world))

    def __len__(self) -> int:
        return self.world * self.batches_per_rank * self.batch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        orders = []
        for r in range(self.world):
            shard = torch.tensor(self.shard(r))
            order = shard[torch.randperm(len(shard), generator=g)].tolist()
            need = self.batches_per_rank * self.batch
            orders.append((order * (need // len(order) + 1))[:need])
        for b in range(self.batches_per_rank):
            for r in range(self.world):
                yield from orders[r][b * self.batch:(b + 1) * self.batch]


def all_reduce_gradients(params, group: Optional[dist.ProcessGroup] = None) -> int:
    """Average the gradients of ``params`` (those requiring grad) over the process group, in
    one flat buffer; a parameter without a gradient on every rank keeps ``None``. Returns the
    bytes sent."""
    params = [p for p in params if p.requires_grad]
    if not params:
        return 0
    world = dist.get_world_size(group)
    ref = next((p.grad for p in params if p.grad is not None), params[0])
    grads = [p.grad.reshape(-1).to(ref.dtype) if p.grad is not None
             else torch.zeros(p.numel(), dtype=ref.dtype, device=ref.device) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], dtype=ref.dtype, device=ref.device)
    flat = torch.cat([*grads, present])
    dist.all_reduce(flat, group=group)
    flat[:-len(params)] /= world
    offset = 0
    for p, count in zip(params, flat[-len(params):].tolist()):
        g = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        if count > 0:
            p.grad = g.to(p.dtype).clone() if p.grad is None else p.grad.copy_(g)
    return flat.numel() * flat.element_size()
