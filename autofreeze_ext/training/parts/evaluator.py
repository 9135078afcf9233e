"""Dev-set evaluation at ``evals_per_epoch`` points of each epoch."""
from __future__ import annotations

import logging

from ...policies import tiled_interval_ends
from ..evaluate import evaluate_metrics
from .base import Part
from .converged import CONVERGED

log = logging.getLogger("autofreeze_ext")


class Evaluator(Part):
    """Evaluates on the dev set at ``evals_per_epoch`` points tiling each epoch (time not
    counted as training) and records every metric of the task (``metrics``), the one that
    drives the comparison (``score``; ``accuracy`` too for classification), step, epoch,
    training time and frozen depth."""

    def epoch_start(self, run, epoch: int, planned: list) -> None:
        self.ends = tiled_interval_ends(len(planned), run.cfg.run.evals_per_epoch)
        self.epoch = epoch

    def after_step(self, run, res) -> None:
        if run.sampler.position in self.ends:
            self._evaluate(run)

    def end(self, run) -> None:
        """A run the policy stopped mid-epoch is scored where it stopped."""
        evals = run.prog.evals
        if run.stopped == CONVERGED and (not evals or evals[-1]["step"] != run.prog.step):
            self._evaluate(run)

    def _evaluate(self, run) -> None:
        in_epoch = run.sampler.position
        metrics = evaluate_metrics(run.model, run.dev, ctx=run.ctx)
        at = self.epoch + in_epoch / run.steps_per_epoch
        entry = {"step": run.prog.step, "epoch": at, "train_time_s": run.prog.train_time,
                 "score": metrics[run.metric], "metrics": metrics, "frozen_depth": run.ctl.frozen_depth}
        if "accuracy" in metrics:
            entry["accuracy"] = metrics["accuracy"]
        run.prog.evals.append(entry)
        if run.ctx.is_main:
            log.info("%s: step %d epoch %.2f dev %s %.2f%% frozen %d/%d", run.cfg.freeze.mode, run.prog.step, at,
                     run.metric, 100 * metrics[run.metric], run.ctl.frozen_depth, run.num_blocks)
