"""Per-block gradient accumulators over an evaluation interval, reduced by the fused op."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..ops.grad_stats import NORMS, grad_stats


class GradientStatistics:
    """Accumulates each block's gradients in fp32 and reduces per-block norms.

    One flat fp32 buffer per block (allocated on first use, on the parameters' device),
    viewed per parameter, so that releasing a frozen block frees its memory at once.
    Parameters without a gradient in a step are skipped for that step.

    Args:
        blocks: the parameters of each block, in forward order.
        norm: ``"l2"`` (default) or ``"l1"``.
    """

    def __init__(self, blocks: Sequence[Sequence[nn.Parameter]], norm: str = "l2") -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {sorted(NORMS)}, got {norm!r}")
        self.norm = norm
        self._params: List[List[nn.Parameter]] = [list(ps) for ps in blocks]
        self._buffers: Dict[int, Tensor] = {}
        self._views: Dict[int, List[Tensor]] = {}
        self.steps = 0  # steps accumulated in the current interval

    @property
    def num_blocks(self) -> int:
        return len(self._params)

    def _views_of(self, b: int) -> List[Tensor]:
        views = self._views.get(b)
        if views is None:
            ps = self._params[b]
            device = ps[0].device if ps else torch.device("cpu")
            buf = torch.zeros(sum(p.numel() for p in ps), dtype=torch.float32, device=device)
            views, off = [], 0
            for p in ps:
                views.append(buf[off:off + p.numel()])
                off += p.numel()
            self._buffers[b], self._views[b] = buf, views
        return views

    def accumulate(self, active: Sequence[int], finish: bool = False) -> Optional[List[float]]:
        """Add this step's gradients of the ``active`` blocks.

        With ``finish=True`` also reduce each active block's norm of the accumulated sum and
        zero the accumulators (same pass), and return the norms (index = block; ``nan`` for
        blocks not in ``active``). The sums are over ``self.steps`` steps; ``steps`` restarts.
        """
        groups: Dict[torch.device, tuple] = defaultdict(lambda: ([], [], [], [], []))
        for b in active:
            for p, acc in zip(self._params[b], self._views_of(b)):
                g = p.grad
                accs, grads, ids, idle, idle_ids = groups[acc.device]
                if g is None:
                    if finish:  # no gradient this step, but its sum so far counts
                        idle.append(acc)
                        idle_ids.append(b)
                    continue
                if g.layout != torch.strided:
                    raise TypeError(f"sparse gradient ({g.layout}) in block {b}: only dense gradients are supported")
                accs.append(acc)
                grads.append(g if g.is_contiguous() else g.contiguous())
                ids.append(b)
        self.steps += 1
        if not finish:
            for accs, grads, ids, _, _ in groups.values():
                if accs:
                    grad_stats(accs, grads, ids, self.num_blocks, norm=self.norm, compute_norms=False)
            return None
        sums = torch.zeros(self.num_blocks, dtype=torch.float64)
        for accs, grads, ids, idle, idle_ids in groups.values():
            for a, g, i in ((accs, grads, ids), (idle, None, idle_ids)):
                if a:
                    n = grad_stats(a, g, i, self.num_blocks, norm=self.norm, compute_norms=True, zero_after=True)
                    n = n.to("cpu", torch.float64)
                    sums += n.square() if self.norm == "l2" else n
        norms = (sums.sqrt() if self.norm == "l2" else sums).tolist()
        active_set = set(active)
        self.steps = 0
        return [norms[b] if b in active_set else math.nan for b in range(self.num_blocks)]

    def reset(self) -> None:
        """Zero all accumulators and restart the interval."""
        for buf in self._buffers.values():
            buf.zero_()
        self.steps = 0

    def release(self, block: int) -> None:
        """Free the accumulator of ``block`` (called when it freezes)."""
        self._buffers.pop(block, None)
        self._views.pop(block, None)

    def memory_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def state_dict(self) -> dict:
        return {"norm": self.norm, "steps": self.steps,
                "buffers": {b: buf.detach().cpu().clone() for b, buf in self._buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["norm"] != self.norm:
            raise ValueError(f"state was saved with norm {state['norm']!r}, this instance uses {self.norm!r}")
        self.steps = int(state["steps"])
        self._buffers.clear()
        self._views.clear()
        for b, saved in state["buffers"].items():
            b = int(b)
            self._views_of(b)
            if saved.numel() != self._buffers[b].numel():
                raise ValueError(f"saved accumulator of block {b} has {saved.numel()} elements, "
                                 f"the block has {self._buffers[b].numel()}")
            self._buffers[b].copy_(saved)
