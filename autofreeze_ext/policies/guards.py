"""Guards: conditions every adaptive freeze must also meet, and the policy base that applies them."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

from .base import Decision, FreezePolicy, IntervalSchedule, IntervalStats


@dataclass
class Guards:
    """What an adaptive policy checks before it freezes; each guard can be switched off.

    Args:
        warmup_steps: no freeze before this many optimizer steps, e.g. the learning-rate
            warm-up (0: off). The CLI and the Trainer callback pass their warm-up length.
        learned: freeze only once the model has measurably started learning: the
            ``probe_loss`` signal (loss on a fixed probe batch of *training* samples over the
            loss of the best constant guess; see :class:`~autofreeze_ext.signals.ProbeLoss`)
            has been at or below this value once (default 0.75; None: off). A model still
            predicting the majority class sits near 1.0.
        max_new_blocks: at most this many more blocks per interval (default 1; None: no cap).
        patience: a block must pass its test in this many consecutive intervals (default 2).
        keep_last: the top blocks that always train (default 1, as the paper's test, which never
            freezes the last active block; 0 lets everything but the head freeze).
    """

    warmup_steps: int = 0
    learned: Optional[float] = 0.75
    max_new_blocks: Optional[int] = 1
    patience: int = 2
    keep_last: int = 1

    def __post_init__(self) -> None:
        if int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0:
            raise ValueError(f"Guards: warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.learned is not None and not 0.0 < float(self.learned) <= 1.0:
            raise ValueError(f"Guards: learned must be in (0, 1] or None, got {self.learned!r}")
        if self.max_new_blocks is not None and (int(self.max_new_blocks) != self.max_new_blocks
                                                or self.max_new_blocks < 1):
            raise ValueError(f"Guards: max_new_blocks must be an integer >= 1 or None, got {self.max_new_blocks!r}")
        if int(self.keep_last) != self.keep_last or self.keep_last < 0:
            raise ValueError(f"Guards: keep_last must be an integer >= 0, got {self.keep_last!r}")
        if int(self.patience) != self.patience or self.patience < 1:
            raise ValueError(f"Guards: patience must be an integer >= 1, got {self.patience!r}")

    @classmethod
    def all_at_once(cls, guards: Optional["Guards"]) -> "Guards":
        """The guards of a policy that freezes every block but the top ones at once
        (:class:`~autofreeze_ext.policies.LateFreeze`, :class:`~autofreeze_ext.policies.PlateauFreeze`):
        warm-up, learning guard and ``keep_last`` as given; patience and the one-block cap do not apply."""
        g = guards if guards is not None else cls()
        return cls(warmup_steps=g.warmup_steps, learned=g.learned, max_new_blocks=None, patience=1,
                   keep_last=g.keep_last)

    @property
    def signals(self) -> Tuple[str, ...]:
        return ("probe_loss",) if self.learned is not None else ()


class AdaptivePolicy(IntervalSchedule, FreezePolicy):
    """Base of the adaptive policies: a per-block test (:meth:`test`), patience, the guards.

    At each interval end :meth:`test` gives each active block a value and whether it passed;
    a block's streak counts its consecutive passes; the candidate depth is the longest
    input-side prefix whose blocks all have ``patience`` passes in a row; the guards may hold
    it back. :attr:`last` (a :class:`Decision`) records values, threshold and the guard that
    held a freeze, and the controller copies it into its history.
    """

    reads: Tuple[str, ...] = ()  #: signals the test reads
    #: what the tested values are, for the story when the test reads no signal (None: the
    #: gradient-norm change)
    value_name: Optional[str] = None

    def __init__(self, guards: Optional[Guards], intervals_per_epoch: int, interval_steps: Optional[int]) -> None:
        self._init_schedule(type(self).__name__, intervals_per_epoch, interval_steps)
        self.guards = guards if guards is not None else Guards()
        self.signals = tuple(dict.fromkeys(self.reads + self.guards.signals))
        self._streak: Dict[int, int] = {}
        self.learned_at: Optional[int] = None  #: step at which the learning guard first passed
        self.last: Optional[Decision] = None

    def test(self, stats: IntervalStats) -> Optional[Tuple[Dict[int, float], float, Dict[int, bool]]]:
        """``(value per active block, threshold, passed per block)``, or None when this interval
        only sets a baseline."""
        raise NotImplementedError

    def decide(self, stats: IntervalStats) -> int:
        d0 = stats.frozen_depth
        rec = Decision(step=stats.step, decided=d0)
        self._check_learned(stats)
        tested = self.test(stats)
        if tested is None:
            self._streak = {}
        else:
            rec.eta, rec.threshold, passed = tested
            rec.signal = self.reads[0] if self.reads else self.value_name
            self._streak = {b: self._streak.get(b, 0) + 1 if ok else 0 for b, ok in passed.items()}
            cand, top = d0, min(stats.max_depth, stats.num_blocks - self.guards.keep_last)
            while cand < top and self._streak.get(cand, 0) >= self.guards.patience:
                cand += 1
            rec.decided, rec.held_by = self._guard(stats, cand)
        self.last = rec
        return rec.decided

    def lookahead(self) -> Optional[int]:
        """With at most ``max_new_blocks`` more blocks per interval, a decision reaches that far
        (+1: the block above, whose streak patience is counting)."""
        return None if self.guards.max_new_blocks is None else self.guards.max_new_blocks + 1

    def signals_needed(self) -> Tuple[str, ...]:
        """Once the learning guard has passed it never reads ``probe_loss`` again: the probe
        forward is skipped from then on (unless the test itself reads the signal)."""
        if self.learned_at is None:
            return self.signals
        return tuple(s for s in self.signals if s != "probe_loss" or s in self.reads)

    def _check_learned(self, stats: IntervalStats) -> None:
        loss = stats.signals.get("probe_loss")
        if (self.learned_at is None and self.guards.learned is not None and isinstance(loss, float)
                and loss <= self.guards.learned):
            self.learned_at = stats.step

    def _guard(self, stats: IntervalStats, cand: int) -> Tuple[int, Optional[str]]:
        g, d0 = self.guards, stats.frozen_depth
        if cand <= d0:
            return d0, None
        if stats.step < g.warmup_steps:
            return d0, f"warm-up: step {stats.step} < {g.warmup_steps}"
        if g.learned is not None and self.learned_at is None:
            loss = stats.signals.get("probe_loss")
            shown = f"{loss:.2f}" if isinstance(loss, float) and math.isfinite(loss) else str(loss)
            return d0, f"not learning yet: probe loss {shown} of the constant guess's > {g.learned:g}"
        if g.max_new_blocks is not None and cand > d0 + g.max_new_blocks:
            return d0 + g.max_new_blocks, f"at most {g.max_new_blocks} more block(s) per interval"
        return cand, None

    def on_invalid_interval(self, stats: IntervalStats) -> None:
        self._streak = {}
        self.last = Decision(step=stats.step, decided=stats.frozen_depth)

    def state_dict(self) -> dict:
        return {"streak": dict(self._streak), "learned_at": self.learned_at, "guards": asdict(self.guards)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("guards") not in (None, asdict(self.guards)):
            raise ValueError(f"{type(self).__name__}: state has guards {state['guards']}, this policy "
                             f"{asdict(self.guards)}")
        self._streak = {int(b): int(v) for b, v in state.get("streak", {}).items()}
        self.learned_at = state.get("learned_at")

    def _describe_guards(self) -> str:
        g = self.guards
        parts = [f"patience {g.patience}"] if g.max_new_blocks is not None or g.patience > 1 else []
        if g.warmup_steps:
            parts.append(f"warm-up {g.warmup_steps}")
        if g.learned is not None:
            parts.append(f"learned<={g.learned:g}")
        if g.max_new_blocks is not None:
            parts.append(f"+{g.max_new_blocks}/interval")
        return ", ".join(parts)
