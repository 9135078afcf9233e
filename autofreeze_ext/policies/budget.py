"""A speed budget: the user states the speedup; the policy freezes as late as it allows."""
from __future__ import annotations

from typing import Dict, Optional

from .base import Decision, FreezePolicy, IntervalStats
from .guards import AdaptivePolicy
from .stability import StabilityPolicy


class SpeedBudget(FreezePolicy):
    """Meet ``target_speedup`` over full fine-tuning, freezing as late as that allows.

    An inner adaptive policy (default :class:`StabilityPolicy`) proposes when each block
    freezes; the budget adds a deadline. Full fine-tuning's step time ``t0`` is measured at
    depth 0 (the controller's median step time per interval); the budget is
    ``total_steps * t0 / target_speedup``. At each interval end the policy checks whether the
    latest plan still fits: *keep the current depth for one more interval, then freeze one more
    block per interval up to the maximum*, with the step time of each depth measured once seen
    and modelled before that as ``t0 * (1 - (1 - frozen_cost) * depth / num_blocks)``
    (``frozen_cost``: what a frozen block still costs relative to a trainable one, about 0.05
    with the activation cache, about 0.35 without: forward only). If the plan does not fit,
    it freezes one block more now (more if one is not enough). The budget overrides the inner
    policy's guards: it is a guarantee, not a hint; the story records "budget" as the reason.

    Cost: nothing beyond the inner policy's signals. When it freezes: when the inner policy
    does, or when the deadline requires.

    Args:
        target_speedup: e.g. 2.0.
        total_steps: optimizer steps of the whole run (the CLI passes epochs x steps per epoch).
        inner: the adaptive policy whose decisions come first (default ``StabilityPolicy()``).
        frozen_cost: modelled relative cost of a frozen block before its step time is measured.
    """

    def __init__(self, target_speedup: float, total_steps: int, inner: Optional[AdaptivePolicy] = None,
                 frozen_cost: float = 0.05) -> None:
        if not float(target_speedup) >= 1.0:
            raise ValueError(f"SpeedBudget: target_speedup must be >= 1, got {target_speedup!r}")
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"SpeedBudget: total_steps must be an integer >= 1, got {total_steps!r}")
        if not 0.0 <= float(frozen_cost) < 1.0:
            raise ValueError(f"SpeedBudget: frozen_cost must be in [0, 1), got {frozen_cost!r}")
        self.target, self.total_steps, self.frozen_cost = float(target_speedup), int(total_steps), float(frozen_cost)
        self.inner = inner if inner is not None else StabilityPolicy()
        self.signals = self.inner.signals
        self.uses_gradient_stats = self.inner.uses_gradient_stats
        self.cost: Dict[int, float] = {}  #: measured seconds per step by frozen depth
        self.elapsed = 0.0  #: training seconds so far (interval steps x their median step time)
        self.last: Optional[Decision] = None

    def is_interval_end(self, step, steps_per_epoch):
        return self.inner.is_interval_end(step, steps_per_epoch)

    def signals_needed(self):
        return self.inner.signals_needed()

    def step_cost(self, depth: int, num_blocks: int) -> float:
        if depth in self.cost:
            return self.cost[depth]
        return self.cost[0] * (1.0 - (1.0 - self.frozen_cost) * depth / num_blocks)

    def plan_seconds(self, depth: int, stats: IntervalStats) -> float:
        """Seconds left if ``depth`` holds for one interval, then one block more per interval."""
        left, t, d = self.total_steps - stats.step, 0.0, depth
        while left > 0:
            n = min(left, stats.interval_steps) if d < stats.max_depth else left
            t += n * self.step_cost(d, stats.num_blocks)
            left -= n
            d = min(d + 1, stats.max_depth)
        return t

    def decide(self, stats: IntervalStats) -> int:
        if stats.step_seconds is not None:
            self.elapsed += stats.step_seconds * stats.interval_steps
            self.cost[stats.frozen_depth] = stats.step_seconds
        depth = max(stats.frozen_depth, self.inner.decide(stats))
        rec = self.inner.last or Decision(step=stats.step)
        if 0 in self.cost:
            budget = self.total_steps * self.cost[0] / self.target
            need = depth
            while need < stats.max_depth and self.elapsed + self.plan_seconds(need, stats) > budget:
                need += 1
            if need > depth:
                rec.held_by = None
                rec.forced = f"budget: {self.elapsed:.0f} s spent of {budget:.0f} s for {self.target:g}x"
                depth = need
        rec.decided = depth
        self.last = rec
        return depth

    def state_dict(self) -> dict:
        return {"inner": self.inner.state_dict(), "cost": dict(self.cost), "elapsed": self.elapsed,
                "target": self.target, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.cost = {int(d): float(t) for d, t in state["cost"].items()}
        self.elapsed = float(state["elapsed"])

    def describe(self) -> str:
        return f"SpeedBudget({self.target:g}x over {self.total_steps} steps, {self.inner.describe()})"

