"""What :class:`~autofreeze_ext.integrations.hf_trainer.AutoFreezeTrainer` needs under several processes.

* :class:`RankStableSampler`: each rank keeps the same samples for the whole run (a fixed
  shard, reshuffled within itself every epoch), so each rank's activation cache holds exactly
  the samples that rank will see again. It yields one flat order that ``accelerate``'s
  batch sharding (batch *k* goes to rank *k mod world*) cuts back into the shards.
* :class:`SamplerEpoch`: gives the sampler its epoch at each epoch's start, also in an epoch
  resumed mid-way (where the Trainer's own ``set_epoch`` no longer reaches it).
* :func:`check_cached_setup`: the set-ups the cached forward cannot serve, as clear errors.
* :func:`all_reduce_gradients`: the data-parallel gradient average of the trainable
  parameters. The cached training forward runs the model's parts directly, not through the
  ``DistributedDataParallel`` wrapper, so DDP's own hooks never fire; this is the same average
  DDP computes, done once per optimizer update, before clipping, over the *active* parameters
  only (frozen blocks cost no communication).
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist

from ..batching import grouped_batches
from .hf_callback import updates_per_epoch

try:
    from transformers import TrainerCallback
except ImportError:  # transformers is optional; AutoFreezeTrainer explains
    TrainerCallback = object  # type: ignore[misc,assignment]

#: accelerate's distributed types under which the cached forward is correct: one process, or DDP
#: (one device per process); DeepSpeed/FSDP shard the model the runner would call unwrapped
PLAIN_DATA_PARALLEL = ("NO", "MULTI_CPU", "MULTI_GPU")


class RankStableSampler(torch.utils.data.Sampler):
    """Indices for ``world`` ranks taking per-device batches of ``batch_size`` in turn, each
    rank's from its own fixed shard (``range(rank, n, world)``), reshuffled every epoch.

    Each shard is padded with its own first samples of the epoch to a whole number of batches
    and to the longest shard's length (as ``DistributedSampler`` pads), so the cut stays aligned.
    With ``lengths`` (each row's tokens; the Trainer's ``group_by_length``) each rank's batches
    are grouped by length within its shard (:func:`~autofreeze_ext.batching.grouped_batches`).
    """

    def __init__(self, num_samples: int, world: int, batch_size: int, seed: int = 0,
                 lengths: Optional[Sequence[int]] = None) -> None:
        if num_samples < world:
            raise ValueError(f"RankStableSampler: {num_samples} samples cannot feed {world} ranks")
        self.lengths = None if lengths is None else [int(v) for v in lengths]
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
            order = (order * (need // len(order) + 1))[:need]
            if self.lengths is not None:
                order = [i for b in grouped_batches(order, self.lengths, self.batch, g) for i in b]
            orders.append(order)
        for b in range(self.batches_per_rank):
            for r in range(self.world):
                yield from orders[r][b * self.batch:(b + 1) * self.batch]


class SamplerEpoch(TrainerCallback):  # type: ignore[misc,valid-type]
    """Sets :attr:`sampler`'s epoch when each epoch begins: the epochs completed, counted in
    optimizer updates as the Trainer counts them (exact mid-epoch too, after a resume, where the
    Trainer wraps the batch sampler before its own ``set_epoch`` and the call stops short)."""

    def __init__(self) -> None:
        self.sampler: Optional[RankStableSampler] = None

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kw):
        if self.sampler is None or train_dataloader is None:
            return
        self.sampler.set_epoch(state.global_step // updates_per_epoch(len(train_dataloader),
                                                                      args.gradient_accumulation_steps))


def check_cached_setup(trainer) -> None:
    """Raise for a set-up the cached training forward cannot serve (it keys rows by index, runs
    the unwrapped model's parts, and averages gradients itself under DDP)."""
    ds = trainer.train_dataset
    if ds is not None and not hasattr(ds, "__len__"):
        raise TypeError("AutoFreezeTrainer: the cache keys each training row by its index, so train_dataset must "
                        "be map-style (indexable, with a length), not an IterableDataset; or pass cache=False")
    acc, args = trainer.accelerator, trainer.args
    kind = getattr(acc.distributed_type, "value", str(acc.distributed_type))
    if kind not in PLAIN_DATA_PARALLEL:
        raise ValueError(f"AutoFreezeTrainer: the cache runs under one process or DDP (torchrun, accelerate "
                         f"launch), not {kind}, which shards the model; pass cache=False for freezing only")
    if args.n_gpu > 1:
        raise ValueError(f"AutoFreezeTrainer: {args.n_gpu} GPUs in one process (DataParallel) with the cache; launch "
                         "one process per GPU (torchrun --nproc_per_node N) or pass cache=False")
    if args.world_size > 1 and (acc.split_batches or acc.dispatch_batches):
        raise ValueError("AutoFreezeTrainer: with the cache each rank must read its own batches (split_batches "
                         "and dispatch_batches off), or a rank's cache would miss the rows it is sent")


def all_reduce_gradients(params, group: Optional[dist.ProcessGroup] = None) -> int:
    """Average the gradients of ``params`` (those requiring grad) over the process group, as
    DDP does (divided by the world size before the sum), one flat buffer per gradient dtype; a
    parameter without a gradient on any rank keeps ``None``. Returns the bytes sent."""
    by_dtype: Dict[torch.dtype, List[torch.nn.Parameter]] = {}
    for p in params:
        if p.requires_grad:
            by_dtype.setdefault(p.grad.dtype if p.grad is not None else p.dtype, []).append(p)
    world, sent = dist.get_world_size(group), 0
    for dtype, ps in by_dtype.items():
        dev = next((p.grad.device for p in ps if p.grad is not None), ps[0].device)
        parts = [p.grad.reshape(-1) / world if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=dev)
                 for p in ps]
        present = torch.tensor([float(p.grad is not None) for p in ps], dtype=dtype, device=dev)
        flat = torch.cat([*parts, present])
        dist.all_reduce(flat, group=group)
        offset = 0
        for p, count in zip(ps, flat[-len(ps):].tolist()):
            g = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if count > 0:
                p.grad = g.clone() if p.grad is None else p.grad.copy_(g)
        sent += flat.numel() * flat.element_size()
    return sent
