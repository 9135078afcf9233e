"""Stop a run whose loss is no longer a number, before a checkpoint keeps the damage."""
from __future__ import annotations

import logging
import math
import os
import warnings
from collections import deque

from .base import Part

log = logging.getLogger("autofreeze_ext")


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the message says where and what to try."""


class LossGuard(Part):
    """After each step: a non-finite loss stops the run with :class:`TrainingDiverged` (a NaN loss
    has already made the weights NaN). Under fp16's GradScaler, which skips the steps whose
    gradients overflow, only ``scaler_patience`` non-finite losses in a row stop it. It runs
    before the :class:`Checkpointer`, so the checkpoint on disk is the last good one. A loss that
    grows (the mean of the last ``window`` steps above three times the first ``window``'s) is
    warned about once."""

    def __init__(self, scaler_patience: int = 10, window: int = 20) -> None:
        self.patience, self.window = scaler_patience, window
        self.bad = 0
        self.first: list = []
        self.recent: deque = deque(maxlen=window)
        self.warned = False

    def after_step(self, run, res) -> None:
        if math.isfinite(res.loss):
            self.bad = 0
            self._watch(run, res.loss)
            return
        self.bad += 1
        if run.scaler is not None and self.bad < self.patience:
            return  # GradScaler skipped the step; the weights are intact
        ckpt = run.ckpt_path if run.ckpt_path and os.path.exists(run.ckpt_path) else None
        raise TrainingDiverged(
            f"the loss became {res.loss} at step {run.prog.step}"
            f"{f' ({self.bad} steps in a row)' if self.bad > 1 else ''}: training diverged; try a lower --lr "
            f"(now {run.cfg.optim.lr:g}){' or --amp bf16' if run.scaler is not None else ''}"
            + (f"; the last good checkpoint is {ckpt}" if ckpt else ""))

    def _watch(self, run, loss: float) -> None:
        if len(self.first) < self.window:
            self.first.append(loss)
            return
        self.recent.append(loss)
        start = sum(self.first) / len(self.first)
        if not self.warned and len(self.recent) == self.window and sum(self.recent) / self.window > 3 * start > 0:
            self.warned = True
            msg = (f"the training loss is growing: mean {sum(self.recent) / self.window:.3g} over the last "
                   f"{self.window} steps against {start:.3g} at the start (step {run.prog.step}); a lower --lr "
                   "may be needed")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning("%s", msg)
