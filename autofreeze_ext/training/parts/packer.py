"""The time goal's batch packer as a part: grow the global batch as freezing frees memory."""
from __future__ import annotations

import logging
import math
from typing import Optional

from ...cache.activation_cache import parse_bytes
from ...data import ShardedBatchSampler
from ...parallel.context import time_allreduce
from ...planning.packing import ActivationMeter, BatchPacker
from ..comm import from_rank0
from .base import Part

log = logging.getLogger("autofreeze_ext")


class Packer(Part):
    """Wraps :class:`~autofreeze_ext.planning.packing.BatchPacker`: measures activation memory per
    sample at each new depth (an :class:`~autofreeze_ext.planning.packing.ActivationMeter` around the
    next step's first forward), and when a larger global batch pays, sets it on the sampler for
    the next epoch. Its measurements and decisions are its checkpointed state."""

    name = "packer"

    def __init__(self) -> None:
        self.state: dict = {}
        self.packer: Optional[BatchPacker] = None
        self.meter: Optional[ActivationMeter] = None

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state or {})

    def state_dict(self) -> dict:
        if self.packer is not None:  # its measurement in progress too
            self.state["probe"] = self.packer.probe_state()
        return self.state

    def start(self, run) -> None:
        cfg, ctx = run.cfg, run.ctx
        if not run.packing:
            if cfg.mode_goal == "time" and ctx.is_main:
                log.info("--mode-goal time keeps the batch at %d: pass --max-batch to let it grow as blocks freeze",
                         cfg.batch_size)
            return
        sharded = isinstance(run.sampler, ShardedBatchSampler)
        gran = math.lcm(ctx.world_size, run.sampler.shards) if sharded else 1
        self.packer = BatchPacker(
            base_batch=cfg.batch_size, max_batch=cfg.max_batch, granularity=gran, world_size=ctx.world_size,
            grad_accum=cfg.grad_accum, probe_steps=cfg.probe_steps,
            max_activation_bytes=parse_bytes(cfg.max_activation_memory), state=self.state,
            epoch_samples=len(run.train_task.labels), padded=sharded, min_gain=cfg.min_packing_gain,
            allreduce_s=lambda: time_allreduce(ctx, 4 * run.ddp.comm[run.ctl.frozen_depth]["params"]),
            broadcast=lambda entry: from_rank0(entry, ctx))
        if self.state.get("probe"):
            self.packer.load_probe_state(self.state["probe"])
        self.meter = ActivationMeter(run.model)

    def epoch_start(self, run, epoch: int, planned: list) -> None:
        self.global_batch = len(planned[0]) * run.world  # this epoch's batch (the last one may be short)

    def meter_for_next_step(self) -> Optional[ActivationMeter]:
        return self.meter if self.packer is not None and self.packer.measuring else None

    def after_step(self, run, res) -> None:
        if self.packer is None:
            return
        if res.memory is not None:
            self.packer.record_memory(*res.memory)
        new = self.packer.after_step(depth=run.ctl.frozen_depth, batch=self.global_batch, samples=res.samples,
                                     step_s=res.seconds, fixed_s=res.t3 - res.t2, step=run.prog["step"])
        if new is not None:
            if isinstance(run.sampler, ShardedBatchSampler):
                run.sampler.set_global_batch(new)
            else:
                run.sampler.set_batch_size(new)
