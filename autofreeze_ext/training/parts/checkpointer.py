"""Checkpoints every ``checkpoint_every`` steps, at epoch ends and when a part asks."""
from __future__ import annotations

import os
from typing import List

import torch

from ..checkpoint import rng_states, run_state, save_checkpoint
from .base import Outcome, Part


def _check_finite(run) -> None:
    """A model with NaN or infinite weights is never written over the last good checkpoint."""
    from .loss_guard import TrainingDiverged

    bad = next((n for n, p in run.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise TrainingDiverged(f"the weights became NaN or infinite by step {run.prog.step} ({bad}): training "
                               f"diverged; try a lower --lr (now {run.cfg.optim.lr:g}); the last good checkpoint "
                               f"stays in {run.cfg.run.checkpoint_dir}")


class Checkpointer:
    """Writes the checkpoint (atomically; rank 0 writes, every rank's RNG stream is gathered):
    model, optimizer, schedule, controller, sampler position, AMP scaler, the cache's identity
    and the state of every part given (``parts``, by name). Not a part: the loop calls it after
    every part's ``after_step``, so the decisions they took at the step (packer, planner) are
    in it, and before their ``step_done``."""

    def __init__(self, parts: List[Part]) -> None:
        self.parts = parts

    def after_step(self, run, outcome: Outcome) -> None:
        """Save when a part asked (``outcome.checkpoint``), every ``checkpoint_every`` steps and
        at each epoch's end."""
        every = max(1, run.cfg.run.checkpoint_every)
        epoch_end = run.sampler.position == run.steps_per_epoch
        if outcome.checkpoint or run.prog.step % every == 0 or epoch_end:
            self.save(run)

    def save(self, run) -> None:
        if not run.ckpt_path:
            return
        _check_finite(run)
        if run.cache is not None:
            run.cache.flush()
        rngs = [rng_states(run)]
        if run.ctx.distributed:  # every rank's dropout streams; rank 0 writes
            import torch.distributed as dist

            rngs = [None] * run.ctx.world_size
            dist.all_gather_object(rngs, rng_states(run))
            if not run.ctx.is_main:
                return
        os.makedirs(run.cfg.run.checkpoint_dir, exist_ok=True)
        save_checkpoint(run.ckpt_path, run_state(run, rngs, self.parts))
