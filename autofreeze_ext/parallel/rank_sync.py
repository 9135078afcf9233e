"""Ranks that take the same freezing decisions: rank 0's interval statistics and decision,
broadcast to the others of a group (the controller's ``process_group``)."""
from __future__ import annotations

from typing import List, Optional

import torch


class RankSync:
    """Broadcasts rank 0's interval statistics and decision to the other ranks of a group."""

    def __init__(self, group) -> None:
        import torch.distributed as dist

        self.dist, self.group = dist, group
        self.src = dist.get_global_rank(group, 0) if group is not None else 0
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def _bcast(self, values: List[float]) -> List[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.broadcast(t, src=self.src, group=self.group)
        return t.tolist()

    def norms(self, norms: Optional[List[Optional[float]]], n: int) -> List[Optional[float]]:
        # -1 stands for a frozen block (norms are >= 0); NaN/inf travel as they are
        vals = self._bcast([-1.0 if v is None else float(v) for v in (norms or [None] * n)])
        return [None if v == -1.0 else v for v in vals]

    def value(self, v: int) -> int:
        return int(self._bcast([float(v)])[0])

    def signal(self, v, per_block: bool, num_blocks: int):
        """Rank 0's value of a signal: one per block, one float, or a dict of floats."""
        if per_block:
            return self.norms(v, num_blocks)
        if isinstance(v, dict):
            return dict(zip(v, self.norms(list(v.values()), len(v))))
        return self.norms([v], 1)[0]


def resolve_group(process_group) -> "Optional[RankSync]":
    """The :class:`RankSync` of ``process_group`` (``"auto"``: the default group when one is
    initialised); None where there is nothing to agree on (one rank, or no group)."""
    if process_group is None:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        if process_group == "auto":
            return None
        raise ValueError("process_group given but torch.distributed is not initialised")
    group = None if process_group == "auto" else process_group
    if dist.get_world_size(group) < 2:
        return None
    return RankSync(group)
