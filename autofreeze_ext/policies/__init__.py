"""Freezing policies: *when* to freeze how many leading blocks.

A policy only decides; :class:`~autofreeze_ext.FreezeController` applies its decision. A
policy returns the number of leading blocks that should be frozen (a prefix); the controller
never unfreezes, so a smaller answer than the current depth changes nothing.

* ``base``: the interface (:class:`FreezePolicy`, :class:`IntervalStats`, :class:`Decision`),
  full fine-tuning, static and scheduled freezing.
* ``gradient_test``: the paper's gradient-norm test, exactly; :class:`ObserveOnly`.
* ``guards``: :class:`Guards` and :class:`AdaptivePolicy` (per-block test, patience, guards).
* ``stability``: :class:`StabilityPolicy` (absolute per-block signal), :class:`GuardedGradientTest`.
* ``budget``: :class:`SpeedBudget` (a stated speedup, freezing as late as it allows).
* ``late``: :class:`LateFreeze` (all but the top block at a fixed fraction of the run).
* ``plateau``: :class:`PlateauFreeze` (all but the top block once a validation slice stops improving).
* ``modes``: the mode grammar (``full``, ``static:K[@STEP]``, ``autofreeze``, ``+cache``), parsed once.
* ``registry``: policies by name or mode for the CLI, the Trainer callback and ``make_policy``.

Writing a new policy::

    class FreezeHalfAfter(FreezePolicy):
        def __init__(self, step): self.step = step
        def decide(self, s: IntervalStats) -> int:
            return s.num_blocks // 2 if s.step >= self.step else s.frozen_depth
"""
from .base import (Decision, FreezePolicy, IntervalSchedule, IntervalStats, NeverFreeze, ScheduledFreeze,
                   StaticFreeze, percentile, tiled_interval_ends)
from .budget import SpeedBudget
from .gradient_test import GradientNormTest, ObserveOnly
from .guards import AdaptivePolicy, Guards
from .late import LateFreeze
from .modes import MODES_HELP, Mode, parse_mode
from .plateau import PlateauFreeze
from .registry import (DEFAULT_POLICY, NO_VAL_DEFAULT, POLICIES, PolicyOptions, build_policy, default_policy,
                       make_policy, reads_val_slice)
from .stability import GuardedGradientTest, StabilityPolicy

__all__ = ["AdaptivePolicy", "MODES_HELP", "Mode", "parse_mode", "DEFAULT_POLICY", "Decision", "FreezePolicy", "GradientNormTest", "GuardedGradientTest",
           "Guards", "IntervalSchedule", "IntervalStats", "LateFreeze", "NeverFreeze", "ObserveOnly", "POLICIES",
           "PlateauFreeze", "PolicyOptions",
           "ScheduledFreeze", "SpeedBudget", "StabilityPolicy", "StaticFreeze", "build_policy", "make_policy",
           "reads_val_slice", "default_policy", "NO_VAL_DEFAULT",
           "percentile", "tiled_interval_ends"]
