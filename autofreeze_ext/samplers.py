"""Training data plumbing: the indexed dataset and the planned (resumable) batch samplers.

Reading task files lives in :mod:`autofreeze_ext.tasks`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from .batching import grouped_batches

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "sst2_sample"


class IndexedDataset(Dataset):
    """Yields ``(index, item)``: the sample index keys the activation cache across epochs."""

    def __init__(self, tensors: dict) -> None:
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return i, {k: v[i] for k, v in self.tensors.items()}


class _PlannedSampler(Sampler):
    """Yields the planned batches of the running epoch from ``position`` on (resumable)."""

    position: int
    _resumed = False  #: a state was just loaded: the next pass finishes its epoch, even if nothing is left

    def plan_epoch(self) -> List[List[int]]:
        raise NotImplementedError

    def _end_epoch(self) -> None:
        raise NotImplementedError

    def __iter__(self):
        batches = self.plan_epoch()
        if self.position >= len(batches) and not self._resumed:  # the last pass was read to its end
            self._end_epoch()  # but not past it (a loop that counts its batches, as Lightning's): a new epoch
            batches = self.plan_epoch()
        self._resumed = False
        while self.position < len(batches):
            b = batches[self.position]
            self.position += 1
            yield b
        self._end_epoch()


class PlannedBatchSampler(_PlannedSampler):
    """Batch sampler whose epoch order is known before the epoch runs.

    Shuffles like ``DataLoader(shuffle=True)`` but lets the caller take the order first
    (:meth:`plan_epoch`), e.g. to hand it to the activation cache's prefetcher; iterating then
    yields exactly those batches. ``state_dict()`` holds the generator state and the position
    inside the epoch, so a resumed run continues with the same order. With ``lengths`` (each
    row's real tokens) the batches are grouped by length
    (:func:`~autofreeze_ext.batching.grouped_batches`).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 lengths: Optional[Sequence[int]] = None):
        if n < 1 or batch_size < 1:
            raise ValueError("need at least one sample and a positive batch size")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} row lengths for {n} samples")
        self.lengths = None if lengths is None else [int(v) for v in lengths]
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self._planned: Optional[List[List[int]]] = None
        self.position = 0  #: batches of the current epoch already yielded

    def __len__(self) -> int:
        """Batches of the running epoch (of the next one when none is planned)."""
        if self._planned is not None:
            return len(self._planned)
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def set_batch_size(self, batch_size: int) -> None:
        """Batches of ``batch_size`` from the next epoch on (from this one if none of its
        batches was yielded yet); the running epoch keeps its planned batches."""
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        if self._planned is not None and self.position == 0:  # same order, new batches
            order = [i for b in self._planned for i in b]
            self._planned = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
            if self.drop_last and len(self._planned[-1]) < self.batch_size:
                self._planned.pop()

    def plan_epoch(self) -> List[List[int]]:
        """Draw (once) and return the coming epoch's batches."""
        if self._planned is None:
            order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
            order = order.tolist()
            if self.lengths is not None:
                self._planned = grouped_batches(order, self.lengths, self.batch_size, self.generator, self.drop_last)
            else:
                self._planned = [order[s:s + self.batch_size] for s in range(0, self.n, self.batch_size)]
                if self.drop_last and len(self._planned[-1]) < self.batch_size:
                    self._planned.pop()
            self.position = 0
        return self._planned

    def _end_epoch(self) -> None:
        self._planned = None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "planned": self._planned, "position": self.position,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._planned = state["planned"]
        self.position, self._resumed = state["position"], True
        self.batch_size = int(state.get("batch_size", self.batch_size))


class ShardedBatchSampler(_PlannedSampler):
    """Batch sampler for data-parallel training that keeps each sample on the same rank.

    The epoch is a list of *global* batches of ``global_batch`` samples; rank ``r`` of
    ``world_size`` takes the ``r``-th of ``world_size`` equal contiguous slices of each. The
    samples are dealt once (seeded permutation, padded by wrap-around to whole global batches)
    into ``shards`` fixed shards; every epoch shuffles *within* each shard and a
    global batch is the concatenation of one per-shard batch from each shard. With
    ``shards == world_size`` (the default) rank ``r`` therefore sees only shard ``r``, epoch
    after epoch, so its activation cache hits; the price is less randomness than a full
    reshuffle (a sample only ever shares a batch slot with samples of its own shard).
    ``reshuffle_shards_every=k`` deals the shards anew every ``k`` epochs (cache misses that
    epoch); ``0`` never.

    ``rank=None`` yields the whole global batch: a single process then trains on exactly the
    batches a ``world_size``-rank job would (the reference for DDP tests).

    With ``lengths`` (each row's real tokens) each shard's batches are grouped by length within
    the shard (:func:`~autofreeze_ext.batching.grouped_batches`); every shard still gives the
    same number of batches, so all ranks take the same number of steps.

    ``state_dict()`` is ``(epoch, position, shards of the running epoch)``, independent of the
    world size: a job restarted on fewer or more ranks finishes the running epoch with the same
    global batches (re-sliced over the new ranks), so nothing is skipped or seen twice, and
    deals new shards for the new world size from the next epoch on.
    """

    def __init__(self, n: int, global_batch: int, *, world_size: int = 1, rank: Optional[int] = 0,
                 shards: Optional[int] = None, seed: int = 0, reshuffle_shards_every: int = 0,
                 lengths: Optional[Sequence[int]] = None):
        if n < 1 or global_batch < 1:
            raise ValueError("need at least one sample and a positive batch size")
        shards = world_size if shards is None else int(shards)
        if world_size < 1 or shards < 1:
            raise ValueError(f"world_size and shards must be >= 1, got {world_size}, {shards}")
        if rank is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        for what, k in (("the number of workers", world_size), ("the number of shards", shards)):
            if global_batch % k:
                raise ValueError(f"the global batch size {global_batch} is not divisible by {what} ({k}): "
                                 "every rank must take the same number of samples per step")
        if shards > n:
            raise ValueError(f"{shards} shards but only {n} samples")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"{len(lengths)} row lengths for {n} samples")
        self.lengths = None if lengths is None else [int(v) for v in lengths]
        self.n, self.global_batch, self.world_size, self.rank = n, global_batch, world_size, rank
        self.shards, self.seed, self.reshuffle_every = shards, seed, int(reshuffle_shards_every)
        self.epoch = 0
        self.position = 0  #: global batches of the current epoch already yielded
        self._epoch_shards = shards  #: shard count the running epoch was planned with
        self._epoch_batch = global_batch  #: global batch of the running epoch
        self._next_batch = global_batch  #: global batch from the next epoch on (set_global_batch)
        self._planned: Optional[List[List[int]]] = None  # global batches of the running epoch

    # --------------------------------------------------------------- planning
    def _deal(self, epoch: int, shards: int, batch: int) -> List[List[int]]:
        deal_round = epoch // self.reshuffle_every if self.reshuffle_every else 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + deal_round)
        order = torch.randperm(self.n, generator=g).tolist()
        # pad by wrap-around to whole global batches (DistributedSampler-style), so the epoch
        # has ceil(n / global_batch) steps whatever the shard count
        need = (-self.n) % batch
        order += (order * (need // self.n + 1))[:need]
        return [order[k::shards] for k in range(shards)]

    def global_batches(self, epoch: int, shards: Optional[int] = None, batch: Optional[int] = None) -> List[List[int]]:
        """The global batches (of ``batch`` samples) of ``epoch`` when dealt into ``shards`` shards."""
        shards = shards or self.shards
        batch = batch or self.global_batch
        per_shard = batch // shards
        parts = []  # each shard's batches of the epoch
        for k, shard in enumerate(self._deal(epoch, shards, batch)):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (epoch + 1) + k)
            perm = torch.randperm(len(shard), generator=g).tolist()
            order = [shard[i] for i in perm]
            if self.lengths is not None:
                parts.append(grouped_batches(order, self.lengths, per_shard, g))
            else:
                parts.append([order[s:s + per_shard] for s in range(0, len(order), per_shard)])
        return [[i for p in parts for i in p[s]] for s in range(len(parts[0]))]

    def _mine(self, global_batch: List[int]) -> List[int]:
        if self.rank is None:
            return global_batch
        k = len(global_batch) // self.world_size
        extra = len(global_batch) % self.world_size
        start = self.rank * k + min(self.rank, extra)
        return global_batch[start:start + k + (1 if self.rank < extra else 0)]

    def __len__(self) -> int:
        """Global batches (steps) of the running epoch."""
        return -(-self.n // self._epoch_batch)

    @property
    def epoch_global_batch(self) -> int:
        """The global batch size of the running epoch."""
        return self._epoch_batch

    def set_global_batch(self, global_batch: int) -> None:
        """Global batches of ``global_batch`` samples from the next epoch on (from this one if
        none of its batches was yielded yet). The shards stay as they are, so a rank keeps its
        samples (and its cache hits); the running epoch keeps its planned batches."""
        global_batch = int(global_batch)
        for what, k in (("the number of workers", self.world_size), ("the number of shards", self.shards)):
            if global_batch < 1 or global_batch % k:
                raise ValueError(f"the global batch size {global_batch} is not a positive multiple of {what} ({k})")
        self._next_batch = global_batch
        if self.position == 0:
            self._epoch_batch = global_batch
            self._planned = None

    def plan_epoch(self) -> List[List[int]]:
        """This rank's batches of the running epoch (all of them, also those already yielded)."""
        if self._planned is None:
            self._planned = self.global_batches(self.epoch, self._epoch_shards, self._epoch_batch)
        return [self._mine(b) for b in self._planned]

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self._planned = None
        self._epoch_shards = self.shards
        self._epoch_batch = self._next_batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "shards": self._epoch_shards, "seed": self.seed,
                "n": self.n, "global_batch": self.global_batch, "epoch_global_batch": self._epoch_batch,
                "next_global_batch": self._next_batch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != self.n or state.get("global_batch") != self.global_batch:
            raise ValueError(f"sampler state is for {state.get('n')} samples in global batches of "
                             f"{state.get('global_batch')}, not {self.n} / {self.global_batch}")
        self.epoch, self.position, self._resumed = int(state["epoch"]), int(state["position"]), True
        self._epoch_shards, self.seed = int(state["shards"]), int(state["seed"])
        self._epoch_batch = int(state.get("epoch_global_batch", self.global_batch))
        self._next_batch = int(state.get("next_global_batch", self._epoch_batch))
        for b in {self._epoch_batch, self._next_batch}:
            if b % self.world_size:
                raise ValueError(f"the saved global batch size {b} is not divisible by the number of workers "
                                 f"({self.world_size}): resume on a divisor of it")
        self._planned = None
