"""The policy interface, full fine-tuning, static and scheduled freezing, interval schedules."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple



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
    #: other signals by name, see ``autofreeze_ext.signals``: one value per block (``None`` for
    #: frozen blocks), or one float for model-level signals such as ``probe_loss``
    signals: Dict[str, object] = field(default_factory=dict)
    #: median wall-clock seconds per optimizer step in this interval, measured by the controller
    #: between optimizer steps (everything the loop does per step; evaluation pauses are outliers
    #: the median ignores); None before two steps were seen
    step_seconds: Optional[float] = None


@dataclass
class Decision:
    """What a policy tested at one interval end, for the controller's history (the run's
    freezing story): the per-block values, the threshold, the depth decided and, when a freeze
    was held back, which guard held it."""

    step: int
    eta: Dict[int, float] = field(default_factory=dict)  #: the tested value per active block
    threshold: float = math.nan
    decided: int = 0
    held_by: Optional[str] = None
    signal: Optional[str] = None  #: which signal ``eta`` holds (None: the gradient-norm change)
    forced: Optional[str] = None  #: why a freeze came without the test (e.g. a speed budget)


class FreezePolicy:
    """Base class. Override :meth:`decide`; the rest has sensible defaults.

    What a policy needs from the controller is declared here, and the controller reads nothing
    else of it: :attr:`uses_gradient_stats` and :attr:`norm` (the fused gradient statistics),
    :attr:`signals` (which :mod:`~autofreeze_ext.signals` it reads; ``"val_slice"`` makes the
    CLI and the Trainer integrations hold out a validation slice) and :meth:`signals_needed`
    (which of them to measure at the coming interval end), :meth:`lookahead` (how far one
    decision reaches, which bounds the per-block signals' work), :meth:`is_interval_end` and
    :meth:`decide`; :attr:`last` is the :class:`Decision` it recorded for the history, and
    :meth:`should_stop` may end the run.
    """

    #: ask the controller to accumulate gradient statistics (costs one fused pass per step)
    uses_gradient_stats: bool = False
    #: the norm those statistics take (``"l2"`` or ``"l1"``)
    norm: str = "l2"
    #: names of the :mod:`~autofreeze_ext.signals` the policy reads (the controller must have them)
    signals: Tuple[str, ...] = ()
    #: what the last :meth:`decide` tested, for the controller's history (None: nothing to tell)
    last: Optional["Decision"] = None

    def initial_depth(self, num_blocks: int) -> int:
        """Blocks frozen before training starts."""
        return 0

    def is_interval_end(self, step: int, steps_per_epoch: Optional[int]) -> bool:
        """True when ``decide`` should run after optimizer step number ``step`` (1-based)."""
        return True

    def decide(self, stats: IntervalStats) -> int:
        """Return the number of leading blocks that should be frozen."""
        raise NotImplementedError

    def lookahead(self) -> Optional[int]:
        """How many blocks above the frozen prefix one decision can reach (None: any): the
        per-block signals measure no further."""
        return None

    @property
    def reads_val_slice(self) -> bool:
        """The policy reads the validation slice (the run must hold one out)."""
        return "val_slice" in self.signals

    def signals_needed(self) -> Tuple[str, ...]:
        """The signals of :attr:`signals` to measure at the coming interval end; the controller
        skips the others (their cost too). Default: all of them."""
        return tuple(self.signals)

    def on_invalid_interval(self, stats: IntervalStats) -> None:
        """Called instead of :meth:`decide` when the interval's statistics were NaN/Inf."""

    def should_stop(self) -> bool:
        """True once the policy judges that training has converged and the run may end (the
        loop stops after this step; default: never)."""
        return False

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
