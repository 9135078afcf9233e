"""Rank 0's value on every rank."""
from __future__ import annotations

from ..parallel.context import DistContext


def from_rank0(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank (identity in a world of one)."""
    if ctx.world_size < 2:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
