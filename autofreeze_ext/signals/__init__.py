"""Per-block signals that a freezing policy can read at the end of an evaluation interval.

Each signal watches training from the optimizer-step hook of a
:class:`~autofreeze_ext.FreezeController` and, at an interval end, gives one number per
active block (``None`` for frozen blocks). Policies name the signals they read; the
controller's history keeps every value, so a run that only observes (``ObserveOnly``) can be
replayed offline against any policy.

* ``grad_norm`` (built into the controller, :class:`~autofreeze_ext.GradientStatistics`):
  norm of the block's gradient summed over the interval, divided by its steps.
* :class:`ParameterDisplacement` (``displacement``): how far the block's weights moved over
  the interval divided by the length of the path they took (sampled every few steps), in
  [0, 1]: near 1 while a block drifts steadily, near 0 once its updates cancel out.
* :class:`ProbeDrift` (``probe_drift``): 1 - linear CKA between the block's outputs on a fixed
  probe batch of training samples at consecutive interval ends (how much its representation
  still changes).
* :class:`BlockDrift` (``block_drift``): 1 - linear CKA between the block's output now and
  the output its previous-interval weights give on the same current input (its own change,
  without the cascade from blocks below that freezing causes in ``probe_drift``).
* :class:`ProbeLoss` (``probe_loss``, one value for the model): the loss on a fixed probe batch
  of training samples over the loss of the best constant guess (1.0 until the model learns).
* :class:`ValSlice` (``val_slice``, one ``{"score", "loss"}`` for the model): the task metric and
  loss on a validation slice of rows never trained on (the plateau policy's signal).
"""
from .base import Signal
from .block_drift import BlockDrift
from .displacement import ParameterDisplacement
from .probe import ProbeForward
from .probe_drift import ProbeDrift, linear_cka
from .probe_loss import ProbeLoss, prior_loss
from .val_slice import ValSlice
from .factory import ALL_SIGNALS, NEEDS_PROBE, PROBE_SAMPLES, make_signals

__all__ = ["ALL_SIGNALS", "BlockDrift", "NEEDS_PROBE", "PROBE_SAMPLES", "ParameterDisplacement", "ProbeDrift", "ProbeForward", "ProbeLoss", "Signal", "ValSlice",
           "linear_cka", "make_signals", "prior_loss"]
