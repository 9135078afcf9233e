"""A tqdm progress bar with the loss and the frozen depth (rank 0 only)."""
from __future__ import annotations

from .base import Part


class ProgressBar(Part):
    """Steps done and to do (the total follows a growing batch), with the loss and frozen depth."""

    def start(self, run) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=run.total_steps, initial=run.prog.step, desc=run.cfg.freeze.mode, unit="step",
                        dynamic_ncols=True)

    def epoch_start(self, run, epoch: int, planned: list) -> None:  # the batch may have grown
        n = len(planned)
        self.bar.total = run.prog.step + n - run.sampler.position + n * (run.cfg.optim.epochs - epoch - 1)
        self.bar.refresh()

    def after_step(self, run, res) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{res.loss:.3f}", frozen=f"{run.ctl.frozen_depth}/{run.num_blocks}")

    def end(self, run) -> None:
        self.bar.close()
