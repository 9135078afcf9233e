"""Dev-set metrics, the predictions split across ranks under torch.distributed."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..batching import row_lengths, trim_batch
from ..parallel.context import DistContext, all_reduce_sum
from ..tasks import compute


@torch.inference_mode()
def predict(model, data: dict, batch_size: int = 128, ctx: Optional[DistContext] = None) -> list:
    """The model's prediction for every row of ``data``: a class id (argmax) or, with one
    output, the regression value. Rows are taken longest first, each batch padded to its
    longest row. Under torch.distributed each rank predicts a slice and the slices are summed
    into the whole list on every rank."""
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    n = len(data["labels"])
    lengths = row_lengths(data)
    order = sorted(range(n), key=lambda i: -lengths[i])
    lo, hi = n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size
    dev = next(model.parameters()).device
    preds = [0.0] * n
    for s in range(lo, hi, batch_size):
        rows = torch.tensor(order[s:min(s + batch_size, hi)])
        batch = trim_batch({k: v[rows] for k, v in data.items() if k != "labels"})
        logits = model(**{k: v.to(dev) for k, v in batch.items()}).logits.float().cpu()
        for i, p in zip(rows.tolist(), (logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1)).tolist()):
            preds[i] = p
    model.train(was_training)
    return all_reduce_sum(preds, ctx)


def evaluate_metrics(model, data: dict, batch_size: int = 128, ctx: Optional[DistContext] = None) -> Dict[str, float]:
    """Every metric of the task's kind (classification: labels are integers; regression:
    floats) on ``data``."""
    regression = data["labels"].is_floating_point()
    return compute(predict(model, data, batch_size, ctx), data["labels"].tolist(), regression)


def evaluate(model, data: dict, batch_size: int = 128, ctx: Optional[DistContext] = None) -> float:
    """Accuracy on ``data`` (classification)."""
    return evaluate_metrics(model, data, batch_size, ctx)["accuracy"]
