"""Freeze what has converged: all but the top block(s) at once, when a validation slice stops improving."""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

from .base import IntervalStats
from .guards import AdaptivePolicy, Guards


class PlateauFreeze(AdaptivePolicy):
    """Freeze the embeddings and every block but the top ``keep_last`` at once when the model's
    score on a validation slice has not improved for ``patience`` checks in a row; optionally
    ask the run to stop once the top block's training has plateaued too.

    Why: a fixed point in the run (:class:`LateFreeze`) cannot know whether the model is still
    learning. Where the budget outlasts convergence (fixed "3-4 epochs" recipes on data that
    converge in one) the slice stops improving long before the end, and everything but the top
    block can stop training there; where the model is still learning, the slice keeps
    improving and nothing freezes.

    Signal: ``val_slice`` (:class:`~autofreeze_ext.signals.ValSlice`): the task metric and the
    loss on rows never trained on (by default 5% of the training rows, stratified, held out by
    the CLI or the Trainer integration; a validation file when the user has one; never the dev
    set a run reports). A check *improves* when the score beats the best so far by more than
    ``min_improvement`` or the loss is below the lowest so far; a plateau is ``patience`` checks
    without either. The learning guard (and warm-up guard) still applies.

    Cost: one no-grad forward of the slice per check (``checks_per_epoch``, default 2); none
    after the freeze unless ``stop_when_converged``, and none at the run's last step (with
    ``total_steps``: a freeze or a stop there would save nothing).

    Args:
        patience: checks in a row without improvement that make a plateau (default 2: one epoch).
        min_improvement: how much the score must beat its best to count (default 0.0: any gain).
        guards: :class:`Guards`; ``learned``, ``warmup_steps`` and ``keep_last`` apply (patience
            and the one-block cap do not: everything freezes at once).
        checks_per_epoch, interval_steps: when the slice is measured (evenly tiling each epoch,
            or every ``interval_steps`` optimizer steps).
        stop_when_converged: after the freeze, measure on; when the slice plateaus again (the
            same rule) :meth:`should_stop` turns true (early stopping built in).
        freeze_by: a fraction of the run (needs ``total_steps``): freeze at the first check from
            then on at the latest, if no plateau came first (None: only at a plateau); a deadline
            after the last check before the end freezes nothing (it would save nothing).
        total_steps: the run's optimizer steps, its last step (needed by ``freeze_by``; without
            it the slice is also checked at the last step). A run that goes on past it (resumed
            with a larger budget) has skipped the check at that step.
    """

    reads = ("val_slice",)

    def __init__(self, patience: int = 2, min_improvement: float = 0.0, guards: Optional[Guards] = None,
                 checks_per_epoch: int = 2, interval_steps: Optional[int] = None,
                 stop_when_converged: bool = False, freeze_by: Optional[float] = None,
                 total_steps: Optional[int] = None) -> None:
        if int(patience) != patience or patience < 1:
            raise ValueError(f"PlateauFreeze: patience must be an integer >= 1 (checks), got {patience!r}")
        if not 0 <= min_improvement < math.inf:
            raise ValueError(f"PlateauFreeze: min_improvement must be finite and >= 0, got {min_improvement!r}")
        if freeze_by is not None and (not 0 < freeze_by <= 1 or not total_steps or total_steps < 1):
            raise ValueError(f"PlateauFreeze: freeze_by must be a fraction of the run in (0, 1] with total_steps "
                             f">= 1, got {freeze_by!r} and {total_steps!r}")
        super().__init__(Guards.all_at_once(guards), checks_per_epoch, interval_steps)
        self.patience, self.min_improvement = int(patience), float(min_improvement)
        self.stop_when_converged = bool(stop_when_converged)
        self.freeze_by = None if freeze_by is None else float(freeze_by)
        self.freeze_by_step = None if freeze_by is None else max(1, round(float(freeze_by) * int(total_steps)))
        self.total_steps = None if not total_steps else int(total_steps)
        self._reset()
        self.frozen_at: Optional[int] = None  #: step of the plateau freeze
        self.converged_at: Optional[int] = None  #: step at which the top block plateaued too

    def is_interval_end(self, step: int, steps_per_epoch: Optional[int]) -> bool:
        """The checks tile each epoch, but the run's last step has none: nothing trains after it."""
        return step != self.total_steps and super().is_interval_end(step, steps_per_epoch)

    def _reset(self) -> None:
        self.best_score, self.best_loss, self.since_best = -math.inf, math.inf, 0

    def _observe(self, value: Dict[str, float]) -> None:
        score, loss = float(value["score"]), float(value["loss"])
        improved = score > self.best_score + self.min_improvement or loss < self.best_loss
        self.best_score, self.best_loss = max(self.best_score, score), min(self.best_loss, loss)
        self.since_best = 0 if improved else self.since_best + 1

    def test(self, stats: IntervalStats) -> Optional[Tuple[Dict[int, float], float, Dict[int, bool]]]:
        value = stats.signals.get("val_slice")
        if not isinstance(value, dict):
            return None
        self._observe(value)
        if self.frozen_at is not None:
            if self.stop_when_converged and self.converged_at is None and self.since_best >= self.patience:
                self.converged_at = stats.step
            return None
        plateau = self.since_best >= self.patience
        late = self.freeze_by_step is not None and stats.step >= self.freeze_by_step
        active = range(stats.frozen_depth, stats.num_blocks)
        return ({b: float(self.since_best) for b in active}, float(self.patience),
                {b: plateau or late for b in active})

    def decide(self, stats: IntervalStats) -> int:
        depth = super().decide(stats)
        top = min(stats.max_depth, stats.num_blocks - self.guards.keep_last)
        if self.frozen_at is None and depth >= top > stats.frozen_depth:
            self.frozen_at = stats.step
            self._reset()  # from here the slice measures the top block's training alone
        return depth

    def signals_needed(self) -> Tuple[str, ...]:
        """After the freeze the slice is measured only to stop the run (``stop_when_converged``)."""
        needed = super().signals_needed()
        if self.frozen_at is not None and (not self.stop_when_converged or self.converged_at is not None):
            return tuple(s for s in needed if s != "val_slice")
        return needed

    def should_stop(self) -> bool:
        return self.converged_at is not None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best_score": self.best_score, "best_loss": self.best_loss,
                "since_best": self.since_best, "frozen_at": self.frozen_at, "converged_at": self.converged_at}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.best_score, self.best_loss = float(state["best_score"]), float(state["best_loss"])
        self.since_best, self.frozen_at = int(state["since_best"]), state["frozen_at"]
        self.converged_at = state["converged_at"]

    def describe(self) -> str:
        extra = ", then stop when converged" if self.stop_when_converged else ""
        by = f", by step {self.freeze_by_step}" if self.freeze_by_step else ""
        guards = self._describe_guards()
        return (f"PlateauFreeze(no gain in {self.patience} checks, {self._every()}{by}{extra}, "
                + (f"{guards}, " if guards else "") + f"top {self.guards.keep_last} train)")
