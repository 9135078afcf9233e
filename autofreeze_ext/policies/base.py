"""Freezing policies: *when* to freeze how many leading blocks.

A policy only decides; :class:`~autofreeze_ext.FreezeController` applies its decision. A
policy returns the number of leading blocks that should be frozen (a prefix); the controller
never unfreezes, so a smaller answer than the current depth changes nothing. Writing a new
policy::

    class FreezeHalfAfter(FreezePolicy):
        def __init__(self, step): self.step = step
        def decide(self, s: IntervalStats) -> int:
            return s.num_blocks // 2 if s.step >= self.step else s.frozen_depth
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .ops.grad_stats import NORMS


@dataclass
class IntervalStats:
    """What a policy sees at the end of an evaluation interval."""

    step: int  #: optimizer steps completed so far
    epoch: float  #: ``step / steps_per_epoch`` (nan when unknown)
    frozen_depth: int  #: leading blocks frozen now
    num_blocks: int
    max_depth: int  #: the most blocks the controller will freeze
    interval_steps: int  #: steps in this interval
    #: per-block norm of the interval's mean gradient; None for frozen blocks or when the
    #: policy does not use gradient statistics
    norms: Optional[List[Optional[float]]] = None
    #: other per-block signals by name (``None`` for frozen blocks), see ``autofreeze_ext.signals``
    signals: Dict[str, List[Optional[float]]] = field(default_factory=dict)


class FreezePolicy:
    """Base class. Override :meth:`decide`; the rest has sensible defaults."""

    #: ask the controller to accumulate gradient statistics (costs one fused pass per step)
    uses_gradient_stats: bool = False
    #: names of the :mod:`~autofreeze_ext.signals` the policy reads (the controller must have them)
    signals: Tuple[str, ...] = ()

    def initial_depth(self, num_blocks: int) -> int:
        """Blocks frozen before training starts."""
        return 0

    def is_interval_end(self, step: int, steps_per_epoch: Optional[int]) -> bool:
        """True when ``decide`` should run after optimizer step number ``step`` (1-based)."""
        return True

    def decide(self, stats: IntervalStats) -> int:
        """Return the number of leading blocks that should be frozen."""
        raise NotImplementedError

    def on_invalid_interval(self, stats: IntervalStats) -> None:
        """Called instead of :meth:`decide` when the interval's statistics were NaN/Inf."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> str:
        return type(self).__name__


class NeverFreeze(FreezePolicy):
    """Full fine-tuning: never freezes anything."""

    def is_interval_end(self, step, steps_per_epoch):
        return False

    def decide(self, stats):
        return stats.frozen_depth


class StaticFreeze(FreezePolicy):
    """The first ``k`` blocks (and the embeddings, when ``k >= 1``) frozen from the start."""

    def __init__(self, k: int) -> None:
        if int(k) != k or k < 0:
            raise ValueError(f"StaticFreeze: k must be a non-negative integer, got {k!r}")
        self.k = int(k)

    def initial_depth(self, num_blocks):
        if self.k > num_blocks:
            raise ValueError(f"StaticFreeze({self.k}): the model has only {num_blocks} blocks")
        return self.k

    def is_interval_end(self, step, steps_per_epoch):
        return False

    def decide(self, stats):
        return stats.frozen_depth

    def describe(self):
        return f"StaticFreeze({self.k})"


class ScheduledFreeze(FreezePolicy):
    """Freeze by a fixed schedule: ``[(step, k), ...]`` freezes ``k`` blocks once ``step``
    optimizer steps are done (``step`` 0 means from the start)."""

    def __init__(self, schedule: Sequence[Tuple[int, int]]) -> None:
        sched = sorted((int(s), int(k)) for s, k in schedule)
        for s, k in sched:
            if s < 0 or k < 0:
                raise ValueError(f"ScheduledFreeze: steps and depths must be >= 0, got ({s}, {k})")
        self.schedule = sched

    def initial_depth(self, num_blocks):
        return self._depth_at(0)

    def _depth_at(self, step: int) -> int:
        return max([k for s, k in self.schedule if s <= step], default=0)

    def decide(self, stats):
        return max(stats.frozen_depth, self._depth_at(stats.step))

    def describe(self):
        return f"ScheduledFreeze({self.schedule})"


@functools.lru_cache(maxsize=64)
def tiled_interval_ends(steps_per_epoch: int, k: int) -> frozenset:
    """Positions (1..steps_per_epoch) within an epoch at which each of ``k`` intervals that tile
    the epoch ends: ``round(i * steps_per_epoch / k)``, i = 1..k (k capped at the epoch length)."""
    k = max(1, min(k, steps_per_epoch))
    return frozenset(round(i * steps_per_epoch / k) for i in range(1, k + 1))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation (numpy's default), inf-safe."""
    v = sorted(values)
    if not v:
        raise ValueError("percentile of no values")
    rank = q / 100.0 * (len(v) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(v) - 1)
    frac = rank - lo
    if frac == 0.0 or v[hi] == v[lo]:
        return v[lo]
    return v[lo] + (v[hi] - v[lo]) * frac


@dataclass
class _TestRecord:
    step: int
    eta: Dict[int, float] = field(default_factory=dict)
    threshold: float = math.nan
    decided: int = 0


class IntervalSchedule:
    """Evaluation intervals: ``intervals_per_epoch`` tiling each epoch (needs the controller's
    ``steps_per_epoch``), or a fixed ``interval_steps``. Shared by the interval policies."""

    def _init_schedule(self, who: str, intervals_per_epoch: int, interval_steps: Optional[int]) -> None:
        if int(intervals_per_epoch) != intervals_per_epoch or intervals_per_epoch < 1:
            raise ValueError(f"{who}: intervals_per_epoch must be an integer >= 1, got {intervals_per_epoch!r}")
        if interval_steps is not None and (int(interval_steps) != interval_steps or interval_steps < 1):
            raise ValueError(f"{who}: interval_steps must be an integer >= 1, got {interval_steps!r}")
        self.intervals_per_epoch = int(intervals_per_epoch)
        self.interval_steps = None if interval_steps is None else int(interval_steps)

    def _every(self) -> str:
        return f"every {self.interval_steps} steps" if self.interval_steps else f"{self.intervals_per_epoch}/epoch"

    def is_interval_end(self, step: int, steps_per_epoch: Optional[int]) -> bool:
        if self.interval_steps is not None:
            return step % self.interval_steps == 0
        if not steps_per_epoch:
            raise ValueError(
                f"{type(self).__name__} with intervals_per_epoch needs the number of optimizer steps per epoch: "
                "pass FreezeController(..., steps_per_epoch=len(train_loader) // grad_accum_steps), "
                f"or use {type(self).__name__}(interval_steps=N)")
        pos = (step - 1) % steps_per_epoch + 1  # 1..steps_per_epoch
        return pos in tiled_interval_ends(steps_per_epoch, self.intervals_per_epoch)


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
        self.last: Optional[_TestRecord] = None

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
        rec = _TestRecord(step=stats.step, decided=stats.frozen_depth)
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
        self.last = _TestRecord(step=stats.step, decided=stats.frozen_depth)

    def state_dict(self) -> dict:
        return {"prev": dict(self._prev), "percentile": self.percentile, "norm": self.norm,
                "intervals_per_epoch": self.intervals_per_epoch, "interval_steps": self.interval_steps}

    def load_state_dict(self, state: dict) -> None:
        for key in ("percentile", "norm", "intervals_per_epoch", "interval_steps"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"GradientNormTest: state has {key}={state[key]!r}, this policy {getattr(self, key)!r}")
        self._prev = {int(b): float(v) for b, v in state["prev"].items()}


def make_policy(spec: str) -> FreezePolicy:
    """Policy from a short string: ``full``, ``static:K``, ``autofreeze``."""
    spec = spec.strip().lower()
    if spec in ("full", "never", "none"):
        return NeverFreeze()
    if spec.startswith("static:"):
        return StaticFreeze(int(spec.split(":", 1)[1]))
    if spec in ("autofreeze", "gradnorm"):
        return GradientNormTest()
    raise ValueError(f"unknown policy {spec!r}: use 'full', 'static:K' or 'autofreeze'")
