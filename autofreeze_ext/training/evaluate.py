"""Dev-set accuracy, split across ranks under torch.distributed."""
from __future__ import annotations

from typing import Optional

import torch

from ..distributed import DistContext, all_reduce_sum


@torch.inference_mode()
def evaluate(model, data: dict, batch_size: int = 128, ctx: Optional[DistContext] = None) -> float:
    """Accuracy on ``data``; under torch.distributed each rank scores a slice and the counts
    are summed."""
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    correct = 0
    n = len(data["labels"])
    lo, hi = n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size
    dev = next(model.parameters()).device
    for s in range(lo, hi, batch_size):
        e = min(s + batch_size, hi)
        batch = {k: v[s:e].to(dev) for k, v in data.items() if k != "labels"}
        correct += (model(**batch).logits.argmax(-1).cpu() == data["labels"][s:e]).sum().item()
    model.train(was_training)
    return all_reduce_sum([correct], ctx)[0] / n
