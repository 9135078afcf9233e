"""AutoFreeze's gradient-norm test (the paper's Algorithm 1) and the observe-only policy."""
from __future__ import annotations

import math
from typing import Dict, Optional

from ..ops.grad_stats import NORMS
from .base import Decision, FreezePolicy, IntervalSchedule, IntervalStats, percentile


class ObserveOnly(IntervalSchedule, FreezePolicy):
    """Never freezes, but measures every interval: the gradient norms and the signals given to
    the controller land in its history, so a full fine-tuning run can be replayed offline
    against any policy (``benchmarks/bench_policies.py`` does). Cost: the gradient statistics'
    fused pass per step plus each signal's own cost."""

    uses_gradient_stats = True

    def __init__(self, intervals_per_epoch: int = 5, interval_steps: Optional[int] = None, norm: str = "l2") -> None:
        self._init_schedule("ObserveOnly", intervals_per_epoch, interval_steps)
        if norm not in NORMS:
            raise ValueError(f"ObserveOnly: norm must be one of {sorted(NORMS)}, got {norm!r}")
        self.norm = norm

    def decide(self, stats: IntervalStats) -> int:
        return stats.frozen_depth

    def describe(self) -> str:
        return f"ObserveOnly({self._every()})"


class GradientNormTest(IntervalSchedule, FreezePolicy):
    """AutoFreeze's gradient-norm test (Liu et al., Algorithm 1).

    At the end of each evaluation interval, for every active block ``l``::

        eta_l = | ||D_{T-1,l}|| - ||D_{T,l}|| | / ||D_{T-1,l}||

    where ``D_{T,l}`` is block ``l``'s gradient accumulated over interval ``T`` (divided by the
    interval's step count, so intervals of unequal length compare fairly; with equal lengths
    this is exactly the paper's ratio). The first interval (and the first after a skipped one)
    only sets the baseline. Walking the active blocks from the input side, each is frozen
    while ``eta_l`` is below the ``percentile``-th percentile of ``eta`` over the active
    blocks; the walk stops at the first block that is not.

    Degenerate statistics: a previous norm of 0 gives ``eta = 0`` when the current norm is 0
    too (the block gets no gradient at all) and ``eta = inf`` otherwise (no division by zero).
    NaN/Inf norms never lead to a freeze: the controller skips the interval with a warning and
    the next interval sets a new baseline.

    Kept exactly as the paper states it (for reproduction). The authors' public code
    (github.com/YuhanLiu11/AutoFreeze) differs: it takes the L1 norm of the gradient *summed*
    over the interval (``norm="l1"``; our per-step mean gives the same ratios for equal
    intervals), its intervals are hundreds of steps on its data sets (about 833 on IMDb, against
    50 here on 8,000 samples), the first decision comes only at the end of the second interval,
    and its LR schedule is stepped without warm-up. Short intervals make the test noisier:
    ``benchmarks/replay_policies.py`` replays it with 2x and 4x longer intervals (BENCHMARKS.md).

    Args:
        percentile: N in (0, 100); 50 (the median) is the paper's default.
        intervals_per_epoch: evaluation intervals per epoch (paper: 5); needs the
            controller's ``steps_per_epoch``.
        norm: ``"l2"`` (default) or ``"l1"`` (the research code's choice).
        interval_steps: fixed interval length in optimizer steps instead of
            ``intervals_per_epoch`` (for runs without epochs).
    """

    uses_gradient_stats = True

    def __init__(self, percentile: float = 50.0, intervals_per_epoch: int = 5, norm: str = "l2",
                 interval_steps: Optional[int] = None) -> None:
        if not (0.0 < float(percentile) < 100.0):
            raise ValueError(f"GradientNormTest: percentile must be in (0, 100), got {percentile!r}")
        self._init_schedule("GradientNormTest", intervals_per_epoch, interval_steps)
        if norm not in NORMS:
            raise ValueError(f"GradientNormTest: norm must be one of {sorted(NORMS)}, got {norm!r}")
        self.percentile = float(percentile)
        self.norm = norm
        self._prev: Dict[int, float] = {}
        self.last: Optional[Decision] = None

    def describe(self):
        return f"GradientNormTest(p={self.percentile:g}, {self._every()}, {self.norm})"

    @staticmethod
    def eta(prev: float, cur: float) -> float:
        if prev == 0.0:
            return 0.0 if cur == 0.0 else math.inf
        return abs(prev - cur) / prev

    def decide(self, stats: IntervalStats) -> int:
        assert stats.norms is not None, "GradientNormTest needs gradient statistics"
        active = [b for b in range(stats.frozen_depth, stats.num_blocks) if stats.norms[b] is not None]
        cur = {b: float(stats.norms[b]) for b in active}
        rec = Decision(step=stats.step, decided=stats.frozen_depth)
        baseline_ok = bool(active) and all(b in self._prev for b in active)
        if baseline_ok:
            rec.eta = {b: self.eta(self._prev[b], cur[b]) for b in active}
            rec.threshold = percentile(list(rec.eta.values()), self.percentile)
            depth = stats.frozen_depth
            for b in active:  # input side first; only a prefix
                if depth >= stats.max_depth or not rec.eta[b] < rec.threshold:
                    break
                depth = b + 1
            rec.decided = depth
        self._prev = {b: cur[b] for b in active if b >= rec.decided}
        self.last = rec
        return rec.decided

    def on_invalid_interval(self, stats: IntervalStats) -> None:
        self._prev = {}
        self.last = Decision(step=stats.step, decided=stats.frozen_depth)

    def state_dict(self) -> dict:
        return {"prev": dict(self._prev), "percentile": self.percentile, "norm": self.norm,
                "intervals_per_epoch": self.intervals_per_epoch, "interval_steps": self.interval_steps}

    def load_state_dict(self, state: dict) -> None:
        for key in ("percentile", "norm", "intervals_per_epoch", "interval_steps"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"GradientNormTest: state has {key}={state[key]!r}, this policy {getattr(self, key)!r}")
        self._prev = {int(b): float(v) for b, v in state["prev"].items()}
