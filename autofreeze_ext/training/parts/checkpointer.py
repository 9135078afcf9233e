"""Checkpoints every ``checkpoint_every`` steps, at epoch ends and when a part asks."""
from __future__ import annotations

import os
from typing import List

import torch

from ..checkpoint import resume_options, save_checkpoint
from .base import Part


def rng_states(run) -> dict:
    """This rank's random-number streams: the CPU generator and, on a GPU run, its device's."""
    cuda = None
    if run.ctx.device.type == "cuda":
        cuda = torch.cuda.get_rng_state(run.ctx.device)
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _check_finite(run) -> None:
    """A model with NaN or infinite weights is never written over the last good checkpoint."""
    from .loss_guard import TrainingDiverged

    bad = next((n for n, p in run.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
    if bad is not None:
        raise TrainingDiverged(f"the weights became NaN or infinite by step {run.prog['step']} ({bad}): training "
                               f"diverged; try a lower --lr (now {run.cfg.optim.lr:g}); the last good checkpoint "
                               f"stays in {run.cfg.run.checkpoint_dir}")


class Checkpointer(Part):
    """Writes the checkpoint (atomically; rank 0 writes, every rank's RNG stream is gathered):
    model, optimizer, schedule, controller, sampler position, AMP scaler, the cache's identity
    and the state of every part given (``parts``, by name). Runs after the parts that may
    change what the next step does (packer, planner), so their decisions are in it."""

    def __init__(self, parts: List[Part]) -> None:
        self.parts = parts

    def after_step(self, run, res) -> None:
        every = max(1, run.cfg.run.checkpoint_every)
        epoch_end = run.sampler.position == run.steps_per_epoch
        if run.checkpoint_due or run.prog["step"] % every == 0 or epoch_end:
            self.save(run)
            run.checkpoint_due = False

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
        cache = run.cache
        save_checkpoint(run.ckpt_path, {
            "mode": run.cfg.freeze.mode, "run_id": run.run_id, "step": run.prog["step"],
            "options": resume_options(run),
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
            "controller": run.ctl.state_dict(), "sampler": run.sampler.state_dict(), "rng": rngs[0]["cpu"],
            "rng_per_rank": [r["cpu"] for r in rngs], "cuda_rng_per_rank": [r["cuda"] for r in rngs],
            "packing": run.packing,
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "cache": {"path": cache.path, "fingerprint": cache.fingerprint} if cache is not None else None,
            "parts": {p.name: p.state_dict() for p in self.parts if p.name}})
