"""The model's loss on a fixed probe batch of training samples, against the best constant guess."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from .base import Signal
from .probe import ProbeForward, as_forward


def prior_loss(labels: Tensor) -> float:
    """Loss of the best input-independent prediction on ``labels``: the entropy of the label
    frequencies (cross-entropy, integer labels) or their variance (mean squared error, float
    targets). A model whose loss is not clearly below it has not started to learn."""
    if labels.is_floating_point():
        return float(labels.double().var(unbiased=False))
    p = torch.bincount(labels.long().reshape(-1)).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


class ProbeLoss(Signal):
    """A model-level signal: the loss on a fixed probe batch of *training* samples, divided by
    :func:`prior_loss` of the probe's labels (1.0: no better than always guessing the label
    frequencies, e.g. a model still predicting the majority class; 0.0: perfect).

    Measured at each interval end with one no-grad forward of the probe batch in eval mode
    (no dropout, no random numbers drawn, so training is unchanged), the same forward as
    :class:`ProbeDrift`'s when both are built on one :class:`ProbeForward`. It is the "has the model
    started learning?" guard of :class:`~autofreeze_ext.StabilityPolicy`: it carves its
    samples from the training data, never from the dev set. ``interval_end`` returns one float,
    not one value per block.

    Args:
        probe: keyword inputs of a Hugging Face-style model *with* ``labels`` (the model must
            return ``.loss``, or a tuple whose first element is the loss).
    """

    name = "probe_loss"
    per_block = False

    def __init__(self, probe: Union[Mapping[str, Tensor], ProbeForward]) -> None:
        super().__init__()
        self.forward = as_forward(probe)
        if "labels" not in self.forward.probe:
            raise ValueError("ProbeLoss needs a probe batch with 'labels' (a dict of model inputs)")
        self.prior = prior_loss(self.forward.probe["labels"])
        self._ctl = None

    def bind(self, controller) -> None:
        self._ctl = controller

    def loss(self) -> float:
        """The model's loss on the probe batch now (shares the interval's probe forward)."""
        return self.forward.run(self._ctl, [])[1]

    def interval_end(self, active: Sequence[int]) -> Optional[float]:  # type: ignore[override]
        loss = self.loss()
        if self.prior <= 0:  # one label only: nothing to learn beyond the constant
            return 0.0
        return loss / self.prior if math.isfinite(loss) else math.inf
