"""The freezing core: which blocks a model has (:mod:`.adapters`), the controller that measures
them and freezes a prefix (:mod:`.controller`, with the per-block gradient statistics of
:mod:`.stats` and the soft transition of :mod:`.soft_freeze`), and the runner that computes a
frozen prefix without autograd or reads it from the cache (:mod:`.prefix`). What decides a
freeze is pluggable: :mod:`autofreeze_ext.policies` and the signals they read,
:mod:`autofreeze_ext.signals`."""
from .adapters import BlockLayout, UnsupportedModelError, hf_layout, resnet_layout, resolve_layout
from .controller import ControllerOptions, FreezeController
from .prefix import FrozenPrefixRunner
from .soft_freeze import SoftFreeze
from .stats import GradientStatistics

__all__ = ["BlockLayout", "ControllerOptions", "FreezeController", "FrozenPrefixRunner", "GradientStatistics", "SoftFreeze",
           "UnsupportedModelError", "hf_layout", "resnet_layout", "resolve_layout"]
