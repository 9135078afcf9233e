"""Dev-set metrics, the predictions split across ranks under torch.distributed."""
from __future__ import annotations

from typing import Dict, Optional

from ..batching import batched_logits, longest_first
from ..parallel.context import DistContext, all_reduce_sum
from ..tasks import compute


def predict(model, data: dict, batch_size: int = 128, ctx: Optional[DistContext] = None) -> list:
    """The model's prediction for every row of ``data``: a class id (argmax) or, with one
    output, the regression value. Rows are taken longest first, each batch padded to its
    longest row. Under torch.distributed each rank predicts a slice and the slices are summed
    into the whole list on every rank."""
    ctx = ctx or DistContext()
    n = len(data["labels"])
    mine = longest_first(data)[n * ctx.rank // ctx.world_size: n * (ctx.rank + 1) // ctx.world_size]
    preds = [0.0] * n
    if mine:
        logits = batched_logits(model, data, mine, batch_size)
        for i, p in zip(mine, (logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1)).tolist()):
            preds[i] = p
    return all_reduce_sum(preds, ctx)


def evaluate_metrics(model, data: dict, batch_size: int = 128, ctx: Optional[DistContext] = None) -> Dict[str, float]:
    """Every metric of the task's kind (classification: labels are integers; regression:
    floats) on ``data``."""
    regression = data["labels"].is_floating_point()
    return compute(predict(model, data, batch_size, ctx), data["labels"].tolist(), regression)


def evaluate(model, data: dict, batch_size: int = 128, ctx: Optional[DistContext] = None) -> float:
    """Accuracy on ``data`` (classification)."""
    return evaluate_metrics(model, data, batch_size, ctx)["accuracy"]
