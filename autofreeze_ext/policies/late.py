"""A late freeze by design: all but the top block freeze at once, at a fixed fraction of the run."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from .base import IntervalStats
from .guards import AdaptivePolicy, Guards


class LateFreeze(AdaptivePolicy):
    """Freeze every block but the top ``keep_last`` at once, at the first interval end at or after
    ``freeze_at`` of the run's optimizer steps, and only once the model has started learning.

    This is the budget-matched static schedule of the policy sweep made into a setting chosen in
    advance: at the same cost, "all blocks train until late, then all but the top one freeze"
    kept accuracy better than every adaptive policy measured (BENCHMARKS.md, sweep 3), because
    no block stops before the model has learned what the task needs from it. The speedup is
    modest by construction: with the cache, freezing 5 of 6 blocks for the last 20% of a run
    saves about 16% of its training time (about 1.2x).

    Signal: none but the learning guard's (the ``probe_loss`` of a fixed batch of *training*
    samples against the constant guess's loss; never the dev set). Cost: one no-grad forward of
    the probe batch per interval until the model has learned (then none). When it freezes: at
    the first interval end at or after step ``round(freeze_at * total_steps)``; later if the
    learning guard still holds; never if the model never learns.

    Args:
        freeze_at: the fraction of the run's optimizer steps after which the prefix freezes,
            in (0, 1] (default 0.8).
        total_steps: optimizer steps of the whole run (the CLI and the Trainer callback pass it).
        guards: :class:`Guards`; only ``learned``, ``warmup_steps`` and ``keep_last`` matter
            here (default: learning guard 0.75, top block always trains). Patience and the
            one-block-per-interval cap do not apply: this is a schedule, all blocks go at once.
        intervals_per_epoch, interval_steps: when the policy looks (as :class:`StabilityPolicy`).
    """

    value_name = "run_fraction"

    def __init__(self, freeze_at: float = 0.8, total_steps: Optional[int] = None, guards: Optional[Guards] = None,
                 intervals_per_epoch: int = 5, interval_steps: Optional[int] = None) -> None:
        if not 0.0 < float(freeze_at) <= 1.0:
            raise ValueError(f"LateFreeze: freeze_at must be a fraction of the run in (0, 1], got {freeze_at!r}")
        if total_steps is None or int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"LateFreeze: total_steps (the run's optimizer steps) must be an integer >= 1, "
                             f"got {total_steps!r}")
        super().__init__(Guards.all_at_once(guards), intervals_per_epoch, interval_steps)
        self.freeze_at, self.total_steps = float(freeze_at), int(total_steps)
        self.freeze_step = max(1, round(self.freeze_at * self.total_steps))

    def test(self, stats: IntervalStats) -> Optional[Tuple[Dict[int, float], float, Dict[int, bool]]]:
        done = stats.step / self.total_steps
        active = range(stats.frozen_depth, stats.num_blocks)
        return {b: done for b in active}, self.freeze_at, {b: stats.step >= self.freeze_step for b in active}

    def describe(self) -> str:
        return (f"LateFreeze(at {self.freeze_at:g} of {self.total_steps} steps = step {self.freeze_step}, "
                f"{self._every()}, {self._describe_guards()})")
