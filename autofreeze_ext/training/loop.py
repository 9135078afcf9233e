"""The training loop: epochs of steps, the parts called around them, the checkpoint."""
from __future__ import annotations

from typing import List, Optional

from .parts import CONTINUE, STOP_AFTER_STEPS, Checkpointer, Outcome, Part, stop
from .step import micro_plan, train_step


def plan_epoch(run) -> list:
    """The running epoch's batches (a run resumed at an epoch's end moves on to the next)."""
    planned = run.sampler.plan_epoch()
    if run.sampler.position >= len(planned):
        for _ in run.loader:  # yields nothing; the sampler moves on to the next epoch
            pass
        planned = run.sampler.plan_epoch()
    return planned


def _merged(outcomes) -> Outcome:
    out = CONTINUE
    for o in outcomes:
        out = out | o
    return out


def run_loop(run, parts: List[Part], checkpointer: Optional[Checkpointer] = None) -> None:
    """Train until ``cfg.optim.epochs`` are done or a part's outcome stops the run.

    Per step, in this order: :func:`~autofreeze_ext.training.step.train_step` (metered when a
    part's :meth:`~Part.step_meter` asks), every part's ``after_step`` (their outcomes merged),
    the checkpoint when due (``checkpointer``: after every part has decided, so it holds their
    decisions), every part's ``step_done``, then the stop. ``run.stopped`` records why the
    loop ended early."""
    cfg = run.cfg
    run.model.train()
    run.stopped = _merged(p.start(run) for p in parts).stop
    while run.prog.epoch < cfg.optim.epochs and run.stopped is None:
        epoch, planned = run.prog.epoch, plan_epoch(run)
        run.steps_per_epoch = len(planned)  # this epoch's (the batch may have grown)
        run.ctl.begin_epoch(epoch, len(planned), done=run.sampler.position)
        if run.cache is not None:
            run.cache.plan_epoch(micro_plan(planned[run.sampler.position:], cfg.optim.grad_accum))
            run.runner.later_passes = epoch + 1 < cfg.optim.epochs  # the last epoch's rows are never read back
        for p in parts:
            p.epoch_start(run, epoch, planned)
        for indices, batch in run.loader:
            meter = next((m for m in (p.step_meter(run) for p in parts) if m is not None), None)
            res = train_step(run, indices, batch, meter)
            outcome = _merged([p.after_step(run, res) for p in parts])
            if cfg.run.stop_after_steps and run.prog.step >= cfg.run.stop_after_steps:
                outcome = outcome | stop(STOP_AFTER_STEPS)
            if checkpointer is not None:
                checkpointer.after_step(run, outcome)
            for p in parts:
                p.step_done(run, outcome)
            if outcome.stop is not None:
                run.stopped = outcome.stop
                break
    for p in parts:
        p.end(run)
