"""The one step probe: how long an optimizer step takes at one setting (frozen depth, batch).

The batch packer (:mod:`.packing`) and the cost goal's worker planner
(:class:`~autofreeze_ext.training.parts.cost_goal.CostPlanner`) predict from the same
measurement, taken once per setting by :class:`StepProbe`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, List, Optional


@dataclass(frozen=True)
class StepTiming:
    """A probe's reading at one setting: medians over the timed steps, and the measured rate."""

    key: tuple  #: the setting, e.g. (frozen depth, global batch)
    step_s: float  #: median seconds per optimizer step
    fixed_s: float  #: median seconds of the step's fixed part (optimizer, statistics)
    samples_per_s: float  #: samples over seconds of the timed steps (an epoch's last batch may be short)
    steps: int  #: steps timed


class StepProbe:
    """Times the optimizer steps of one setting; a new setting starts a new measurement.

    When the setting changes, the first ``skip`` steps are left out: the step in which a block
    froze is reported at the new depth though most of it ran at the old one, and the first
    whole step at a setting pays one-off costs (DDP rebuilds its buckets, the cache and the
    allocator warm up; the packer meters activation memory on it). The next ``steps`` steps
    are timed; the step that completes them returns a :class:`StepTiming`, once per setting.
    Its state is checkpointed, so a resumed run goes on measuring where it stopped.
    """

    def __init__(self, steps: int, skip: int = 2) -> None:
        if steps < 1 or skip < 0:
            raise ValueError(f"a step probe needs steps >= 1 and skip >= 0, got {steps} and {skip}")
        self.steps, self.skip = int(steps), int(skip)
        self.key: Optional[tuple] = None
        self.seen = 0  #: steps observed at the current setting
        self.times: List[float] = []
        self.fixed: List[float] = []
        self.samples: List[int] = []

    def observe(self, key: Hashable, step_s: float, fixed_s: float = 0.0, samples: int = 0) -> Optional[StepTiming]:
        """Account one finished step at setting ``key``; the reading when this step completes it."""
        key = tuple(key)
        if key != self.key:
            self.key, self.seen, self.times, self.fixed, self.samples = key, 0, [], [], []
        self.seen += 1
        if self.seen <= self.skip or len(self.times) >= self.steps:
            return None
        self.times.append(float(step_s))
        self.fixed.append(float(fixed_s))
        self.samples.append(int(samples))
        if len(self.times) < self.steps:
            return None
        return StepTiming(key=key, step_s=_median(self.times), fixed_s=_median(self.fixed),
                          samples_per_s=sum(self.samples) / max(sum(self.times), 1e-12), steps=len(self.times))

    def state_dict(self) -> dict:
        return {"key": self.key, "seen": self.seen, "times": list(self.times), "fixed": list(self.fixed),
                "samples": list(self.samples)}

    def load_state_dict(self, state: dict) -> None:
        self.key = tuple(state["key"]) if state.get("key") is not None else None
        self.seen = int(state.get("seen", 0))
        self.times, self.fixed, self.samples = list(state["times"]), list(state["fixed"]), list(state["samples"])


def _median(xs: List[float]) -> float:
    return sorted(xs)[len(xs) // 2]
