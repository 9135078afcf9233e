"""autofreeze_ext: freeze the layers that stopped learning, cache what frozen layers compute.

Quick start (plain PyTorch loop)::

    from autofreeze_ext import FreezeController, GradientNormTest
    ctl = FreezeController(model, optimizer, GradientNormTest(percentile=50, intervals_per_epoch=5),
                           steps_per_epoch=len(loader))
    for batch in loader:            # unchanged loop: the controller hooks optimizer.step()
        loss = model(**batch).loss; loss.backward(); optimizer.step(); optimizer.zero_grad()

``backend_info()`` tells which kernels (C++, CUDA or the pure-PyTorch reference) are in use.
"""
from ._backend import backend_info
from .cache import ActivationCache, CacheError
from .samplers import PlannedBatchSampler, ShardedBatchSampler
from .freezing import (BlockLayout, ControllerOptions, FreezeController, FrozenPrefixRunner, GradientStatistics, UnsupportedModelError,
                       hf_layout, resnet_layout, resolve_layout)
from .ops import grad_stats, reference_grad_stats
from .parallel import FreezingDDP
from .policies import (POLICIES, FreezePolicy, GradientNormTest, GuardedGradientTest, Guards, IntervalStats, NeverFreeze,
                       ObserveOnly, PolicyOptions, ScheduledFreeze, SpeedBudget, StabilityPolicy, StaticFreeze,
                       build_policy, make_policy)


__version__ = "0.1.0"

__all__ = [
    "ActivationCache", "BlockLayout", "CacheError", "ControllerOptions", "FreezeController", "FreezingDDP", "FrozenPrefixRunner",
    "FreezePolicy", "GradientNormTest", "GradientStatistics", "GuardedGradientTest", "Guards", "IntervalStats",
    "NeverFreeze", "ObserveOnly", "POLICIES", "PlannedBatchSampler", "PolicyOptions", "ScheduledFreeze", "SpeedBudget", "StabilityPolicy",
    "build_policy", "ShardedBatchSampler", "StaticFreeze", "UnsupportedModelError", "backend_info", "grad_stats",
    "hf_layout", "make_policy", "reference_grad_stats", "resnet_layout", "resolve_layout", "__version__",
]
