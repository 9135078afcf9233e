"""One optimizer step: micro-batches, AMP, backward, the optimizer; timed by phase."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..batching import trim_batch
from ..timing import now
from .config import pad_multiple


@dataclass
class StepResult:
    """What one step did and how long each phase took (``perf_counter`` stamps)."""

    indices: list
    loss: float  #: the global batch's mean loss
    t0: float  #: start
    t1: float  #: forward done (all micro-batches)
    t2: float  #: backward done
    t3: float  #: optimizer done (the controller ran in its post-hook)
    prefix_s: float  #: frozen-prefix forward inside t0..t1
    io_s: float  #: cache reads inside t0..t1
    stats_s: float  #: the controller's statistics and decisions inside t2..t3
    samples: int  #: samples in the global batch
    micro_batches: int
    depth_at_start: int
    memory: Optional[Tuple[int, int, int, Optional[int]]] = None  #: (depth, activation bytes, samples, tokens)

    @property
    def seconds(self) -> float:
        return self.t3 - self.t0


def _bounds(n: int, k: int) -> list:
    return [round(i * n / k) for i in range(k + 1)]


def micro_batches(indices, batch: dict, k: int, multiple: Optional[int] = None):
    """Split a batch (and its sample indices) into ``k`` micro-batches for gradient accumulation,
    each cut to its longest row (rounded up to ``multiple``; None: not cut)."""
    if k <= 1:
        return [(indices, batch)]
    b = _bounds(len(indices), k)
    parts = [(indices[lo:hi], {name: v[lo:hi] for name, v in batch.items()}) for lo, hi in zip(b, b[1:]) if hi > lo]
    return [(i, trim_batch(p, multiple)) for i, p in parts] if multiple else parts


def micro_plan(batches: list, k: int) -> list:
    """The epoch's planned batches as the micro-batches the runner will ask the cache for, in
    order (so the disk tier's prefetcher serves gradient accumulation too)."""
    if k <= 1:
        return list(batches)
    out = []
    for idx in batches:
        b = _bounds(len(idx), k)
        out += [list(idx[lo:hi]) for lo, hi in zip(b, b[1:]) if hi > lo]
    return out


def train_step(run, indices, batch: dict, meter=None) -> StepResult:
    """Forward and backward over the batch's micro-batches (gradients add up in ``.grad``; DDP
    all-reduces after the last), then the optimizer step and the schedule. ``meter``: an
    :class:`~autofreeze_ext.planning.packing.ActivationMeter` around the first micro-batch's forward."""
    ctx, ctl = run.ctx, run.ctl
    if ctx.device.type != "cpu":
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
    dev = ctx.device
    t0 = now(dev)
    depth, stats0 = ctl.frozen_depth, ctl.step_seconds
    io0, pre0 = run.timers["cache_io"], run.timers["prefix_forward"]
    micro = micro_batches(indices, batch, run.cfg.optim.grad_accum, pad_multiple(run.cfg))
    loss, bwd_s, memory = 0.0, 0.0, None
    for k, (idx_k, batch_k) in enumerate(micro):
        sync = run.ddp.no_sync() if run.ddp is not None and k < len(micro) - 1 else contextlib.nullcontext()
        with sync:
            with run.autocast, (meter if meter is not None and k == 0 else contextlib.nullcontext()):
                out = run.runner(idx_k, **batch_k) if run.runner is not None else run.model(**batch_k)
            if meter is not None and k == 0:
                ids = batch_k.get("input_ids")
                tokens = ids.numel() if ids is not None and ids.dim() == 2 else None
                memory = (ctl.frozen_depth, meter.bytes, len(idx_k), tokens)
            part = out.loss * (len(idx_k) / len(indices)) if len(micro) > 1 else out.loss  # the batch's mean
            tb = now(dev)
            (run.scaler.scale(part) if run.scaler is not None else part).backward()
            bwd_s += now(dev) - tb
        loss = loss + part.detach()
    t2 = now(dev)
    samples = len(indices) * run.world
    _optimizer_step(run, samples)
    t3 = now(dev)
    return StepResult(indices=indices, loss=_global_loss(run, loss), t0=t0, t1=t2 - bwd_s, t2=t2, t3=t3,
                      prefix_s=run.timers["prefix_forward"] - pre0, io_s=run.timers["cache_io"] - io0,
                      stats_s=ctl.step_seconds - stats0, samples=samples, micro_batches=len(micro),
                      depth_at_start=depth, memory=memory)


def _optimizer_step(run, samples: int) -> None:
    if run.packing:
        run.sched.apply(run.prog.samples, samples)
    if run.scaler is not None:  # a step GradScaler skips is not counted by the controller
        run.scaler.step(run.opt)
        run.scaler.update()
    else:
        run.opt.step()  # the controller runs in this step's post-hook
    if not run.packing:
        run.sched.step()
    run.opt.zero_grad(set_to_none=True)


def _global_loss(run, loss) -> float:
    if run.ctx.world_size > 1:  # the global batch's loss (mean of the ranks' equal-sized batches)
        import torch.distributed as dist

        dist.all_reduce(loss)
        loss /= run.ctx.world_size
    return loss.item() if isinstance(loss, torch.Tensor) else float(loss)
