"""The training loop: epochs of steps, and the parts called around them."""
from __future__ import annotations

from typing import List, Optional

from .parts import Packer, Part
from .step import micro_plan, train_step


def plan_epoch(run) -> list:
    """The running epoch's batches (a run resumed at an epoch's end moves on to the next)."""
    planned = run.sampler.plan_epoch()
    if run.sampler.position >= len(planned):
        for _ in run.loader:  # yields nothing; the sampler moves on to the next epoch
            pass
        planned = run.sampler.plan_epoch()
    return planned


def run_loop(run, parts: List[Part]) -> None:
    """Train until ``cfg.optim.epochs`` are done or a part sets ``run.stop``; the loop itself only
    plans epochs and runs steps."""
    cfg = run.cfg
    packer: Optional[Packer] = next((p for p in parts if isinstance(p, Packer)), None)
    run.model.train()
    for p in parts:
        p.start(run)
    while run.prog["epoch"] < cfg.optim.epochs and run.stop is None:
        epoch, planned = run.prog["epoch"], plan_epoch(run)
        run.steps_per_epoch = len(planned)  # this epoch's (the batch may have grown)
        run.ctl.begin_epoch(epoch, len(planned), done=run.sampler.position)
        if run.cache is not None:
            run.cache.plan_epoch(micro_plan(planned[run.sampler.position:], cfg.optim.grad_accum))
            run.runner.later_passes = epoch + 1 < cfg.optim.epochs  # the last epoch's rows are never read back
        for p in parts:
            p.epoch_start(run, epoch, planned)
        for indices, batch in run.loader:
            for p in parts:
                p.before_step(run)
            res = train_step(run, indices, batch, packer.meter_for_next_step(run) if packer else None)
            for p in parts:
                p.after_step(run, res)
            if run.stop is None and cfg.run.stop_after_steps and run.prog["step"] >= cfg.run.stop_after_steps:
                run.stop = "stop_after_steps"
            if run.stop is not None:
                break
    for p in parts:
        p.end(run)
