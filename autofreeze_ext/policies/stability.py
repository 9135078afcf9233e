"""Adaptive policies that judge each block on its own: an absolute stability signal, or the
paper's gradient test behind the guards."""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

from .base import IntervalStats, percentile
from .gradient_test import GradientNormTest
from .guards import AdaptivePolicy, Guards

#: signal name -> what its value means (smaller is more stable)
STABILITY_SIGNALS = {
    "probe_drift": "1 - linear CKA of the block's probe-batch outputs between interval ends",
    "block_drift": "1 - linear CKA of the block's output now and with its previous weights, same input",
    "displacement": "weight displacement over path length across the interval",
}


class StabilityPolicy(AdaptivePolicy):
    """Freeze a block once *its own* stability signal stays below an absolute threshold.

    Signal: ``probe_drift`` (default; :class:`~autofreeze_ext.signals.ProbeDrift`, 1 - linear
    CKA between the block's outputs on a fixed probe batch of training samples at consecutive
    interval ends, in the spirit of Egeria) or ``displacement``
    (:class:`~autofreeze_ext.signals.ParameterDisplacement`, APF's idea). Unlike the
    gradient-norm test, nothing is ranked: a block passes when its value is below
    ``threshold``, so no block freezes while every block still changes.

    Cost: the signal's (probe drift: one no-grad forward of the probe batch per interval, shared
    with the ``probe_loss`` learning guard; BENCHMARKS.md has the measured share: 4-5% of
    training time with two separate forwards on a loaded 2-core machine). When it freezes: once the model has started learning (guard), after the warm-up,
    when the next block has passed ``patience`` intervals in a row, one block per interval.

    Args:
        threshold: a block passes when its signal is below this (default 0.002 for
            ``probe_drift``: see BENCHMARKS.md for how it was chosen).
        signal: ``"probe_drift"``, ``"block_drift"`` (the block's own change, without the
            cascade that freezing causes in ``probe_drift``) or ``"displacement"``.
        guards: :class:`Guards` (default: learning guard 0.75, one block per interval, patience 2).
        intervals_per_epoch, interval_steps: the evaluation intervals, as in
            :class:`GradientNormTest`.
    """

    def __init__(self, threshold: float = 0.002, signal: str = "probe_drift", guards: Optional[Guards] = None,
                 intervals_per_epoch: int = 5, interval_steps: Optional[int] = None) -> None:
        if signal not in STABILITY_SIGNALS:
            raise ValueError(f"StabilityPolicy: signal must be one of {sorted(STABILITY_SIGNALS)}, got {signal!r}")
        if not (float(threshold) > 0 and math.isfinite(threshold)):
            raise ValueError(f"StabilityPolicy: threshold must be a positive number, got {threshold!r}")
        self.reads = (signal,)
        super().__init__(guards, intervals_per_epoch, interval_steps)
        self.threshold = float(threshold)

    def test(self, stats: IntervalStats) -> Optional[Tuple[Dict[int, float], float, Dict[int, bool]]]:
        values = stats.signals.get(self.reads[0]) or []
        active = range(stats.frozen_depth, stats.num_blocks)
        got = {b: float(values[b]) for b in active if b < len(values) and values[b] is not None}
        if not got:
            return None
        return got, self.threshold, {b: v < self.threshold for b, v in got.items()}

    def describe(self) -> str:
        return f"StabilityPolicy({self.reads[0]}<{self.threshold:g}, {self._every()}, {self._describe_guards()})"


class GuardedGradientTest(AdaptivePolicy):
    """The paper's gradient-norm test (``eta_l`` below the ``percentile``-th percentile of the
    active blocks' ``eta``) as a per-block pass/fail, behind the guards (patience, warm-up,
    learning, one block per interval). Still a *relative* test: about half the active blocks
    pass at every interval, so the guards decide most of its timing.

    Cost: one fused gradient-statistics pass per step (as :class:`GradientNormTest`), plus the
    learning guard's probe forward per interval.
    """

    uses_gradient_stats = True

    def __init__(self, percentile: float = 50.0, guards: Optional[Guards] = None, intervals_per_epoch: int = 5,
                 interval_steps: Optional[int] = None, norm: str = "l2") -> None:
        self._inner = GradientNormTest(percentile, intervals_per_epoch, norm, interval_steps)
        super().__init__(guards, intervals_per_epoch, interval_steps)
        self.percentile, self.norm = self._inner.percentile, norm
        self._prev: Dict[int, float] = {}

    def test(self, stats: IntervalStats) -> Optional[Tuple[Dict[int, float], float, Dict[int, bool]]]:
        assert stats.norms is not None, "GuardedGradientTest needs gradient statistics"
        active = [b for b in range(stats.frozen_depth, stats.num_blocks) if stats.norms[b] is not None]
        cur = {b: float(stats.norms[b]) for b in active}
        prev, self._prev = self._prev, cur
        if not active or not all(b in prev for b in active):
            return None
        eta = {b: GradientNormTest.eta(prev[b], cur[b]) for b in active}
        thr = percentile(list(eta.values()), self.percentile)
        return eta, thr, {b: v < thr for b, v in eta.items()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "prev": dict(self._prev)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._prev = {int(b): float(v) for b, v in state.get("prev", {}).items()}

    def describe(self) -> str:
        return f"GuardedGradientTest(p={self.percentile:g}, {self._every()}, {self._describe_guards()})"
