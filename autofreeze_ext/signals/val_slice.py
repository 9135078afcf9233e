"""The model's score and loss on a validation slice: held-out rows it never trains on."""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..batching import batched_logits, longest_first
from ..tasks import compute
from .base import Signal


class ValSlice(Signal):
    """A model-level signal: at each interval end, the task metric (``score``, higher is better)
    and the mean loss on a validation slice, as ``{"score": s, "loss": l}``.

    The slice is rows the model never trains on: by default held out of the training rows by
    :func:`autofreeze_ext.tasks.split.hold_out` (a stratified 5%), or a validation file the user
    gives; never the dev set a run reports. One no-grad forward of the slice per interval end in
    eval mode (no dropout, no random numbers drawn: training is unchanged), rows longest first,
    each batch cut to its longest row. Its time is the policy's overhead and counts as training
    time (the controller's ``statistics`` phase).

    Args:
        data: encoded rows with ``labels`` (``input_ids``, ``attention_mask``, ...).
        metric: the task metric that is the ``score`` (``accuracy``, ``f1``, ``pearson``, ...;
            None: accuracy for class labels, Pearson for float targets).
        batch_size: rows per forward (default 32: on a CPU core, 128-row batches took 1.8x as long per
            row, measured on SST-2; the slice is taken longest first, so batches hold similar lengths).
    """

    name = "val_slice"
    per_block = False

    def __init__(self, data: Mapping[str, Tensor], metric: Optional[str] = None, batch_size: int = 32) -> None:
        super().__init__()
        if "labels" not in data or len(data["labels"]) == 0:
            raise ValueError("ValSlice needs encoded rows with 'labels' (a non-empty validation slice)")
        self.regression = data["labels"].is_floating_point()
        self.data, self.batch_size = dict(data), int(batch_size)
        self.metric = metric or ("pearson" if self.regression else "accuracy")
        self.order = longest_first(self.data)
        self._ctl = None

    def __len__(self) -> int:
        return len(self.data["labels"])

    def bind(self, controller) -> None:
        self._ctl = controller

    def measure(self, model) -> Dict[str, float]:
        """``{"score", "loss"}`` of ``model`` on the slice now (no gradients, eval mode)."""
        logits = batched_logits(model, self.data, self.order, self.batch_size)
        labels = self.data["labels"][torch.tensor(self.order)]
        if self.regression:
            loss, preds = F.mse_loss(logits[:, 0], labels.float()), logits[:, 0]
        else:
            loss, preds = F.cross_entropy(logits, labels.long()), logits.argmax(-1)
        score = compute(preds.tolist(), labels.tolist(), self.regression)[self.metric]
        return {"score": float(score), "loss": float(loss) if math.isfinite(float(loss)) else math.inf}

    def interval_end(self, active: Sequence[int]) -> Optional[Dict[str, float]]:  # type: ignore[override]
        if self._ctl is None:
            raise RuntimeError("ValSlice: not bound to a controller (pass it in FreezeController(signals=...))")
        return self.measure(self._ctl.model)
