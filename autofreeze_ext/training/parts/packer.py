"""The time goal's batch packer as a part: grow the global batch as freezing frees memory."""
from __future__ import annotations

import logging
import math
from typing import Optional

from ...cache.activation_cache import parse_bytes
from ...samplers import ShardedBatchSampler
from ...parallel.context import time_allreduce
from ...planning.packing import ActivationMeter, BatchPacker
from ..comm import from_rank0
from .base import Part
from .step_timer import StepTimer

log = logging.getLogger("autofreeze_ext")


def _row_tokens(train: dict) -> int:
    """The longest row the run can see: the stored width of its token tensors (1 without them)."""
    ids = train.get("input_ids")
    return int(ids.shape[1]) if ids is not None and ids.dim() == 2 else 1


class Packer(Part):
    """Wraps :class:`~autofreeze_ext.planning.packing.BatchPacker`: at each new depth the second
    step's first forward runs under an :class:`~autofreeze_ext.planning.packing.ActivationMeter`
    (a step the :class:`StepTimer` leaves out of its timing: :meth:`step_meter`), and when the
    timer's reading at a depth says a larger global batch pays, sets it on the sampler for the
    next epoch. Its
    measurements and decisions are its checkpointed state."""

    name = "packer"

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer
        self.state: dict = {}
        self.packer: Optional[BatchPacker] = None
        self.meter: Optional[ActivationMeter] = None

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state or {})

    def state_dict(self) -> dict:
        return self.state

    def start(self, run) -> None:
        cfg, ctx = run.cfg, run.ctx
        if not run.packing:
            if cfg.goal.kind == "time" and ctx.is_main:
                log.info("--mode-goal time keeps the batch at %d: pass --max-batch to let it grow as blocks freeze",
                         cfg.optim.batch_size)
            return
        sharded = isinstance(run.sampler, ShardedBatchSampler)
        gran = math.lcm(ctx.world_size, run.sampler.shards) if sharded else 1
        self.packer = BatchPacker(
            base_batch=cfg.optim.batch_size, max_batch=cfg.goal.max_batch, granularity=gran, world_size=ctx.world_size,
            grad_accum=cfg.optim.grad_accum, max_activation_bytes=parse_bytes(cfg.goal.max_activation_memory),
            state=self.state, epoch_samples=len(run.train_task.labels), padded=sharded,
            min_gain=cfg.goal.min_packing_gain, row_tokens=_row_tokens(run.train),
            allreduce_s=lambda: time_allreduce(ctx, 4 * run.ddp.comm[run.ctl.frozen_depth]["params"]),
            broadcast=lambda entry: from_rank0(entry, ctx))
        self.meter = ActivationMeter(run.model)

    def step_meter(self, run) -> Optional[ActivationMeter]:
        """The meter when the coming step is the second at a depth whose memory is unknown."""
        if self.packer is None or not self.packer.wants_memory(run.ctl.frozen_depth):
            return None
        return self.meter if self.timer.steps_seen(run) == 1 else None

    def after_step(self, run, res) -> None:
        if self.packer is None:
            return
        if res.memory is not None:
            self.packer.record_memory(*res.memory)
        timing = self.timer.reading(run, res)
        if timing is None:
            return
        new = self.packer.on_timing(timing, step=run.prog.step)
        if new is not None:
            if isinstance(run.sampler, ShardedBatchSampler):
                run.sampler.set_global_batch(new)
            else:
                run.sampler.set_batch_size(new)
