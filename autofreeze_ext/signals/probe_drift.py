"""Representation drift on a fixed probe batch (in the spirit of Egeria, EuroSys 2023)."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .base import Signal


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centred kernel alignment of two ``[n, d]`` representations of the same ``n``
    inputs (Kornblith et al., 2019): 1 for representations equal up to rotation and scale."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    num = torch.linalg.matrix_norm(y.T @ x) ** 2
    den = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(num / den) if den > 0 else 1.0


class ProbeDrift(Signal):
    """``1 - CKA(block output now, block output at the previous interval end)`` per block.

    At each interval end the model runs once, without gradients and in eval mode (no dropout,
    no random numbers drawn, so training is unchanged), on a fixed probe batch of *training*
    samples; each active block's output tokens (padding dropped) are compared with the same
    block's output at the previous interval end. The first interval only records. Cost: one
    forward pass of the probe batch per interval; memory: one output per block.

    Args:
        probe: keyword inputs of the model for the probe batch (e.g. ``input_ids`` and
            ``attention_mask`` of 32 training samples); ``labels`` is ignored.
    """

    name = "probe_drift"

    def __init__(self, probe: Mapping[str, Tensor]) -> None:
        super().__init__()
        if not probe:
            raise ValueError("ProbeDrift needs a probe batch: a dict of model inputs")
        self.probe = {k: v for k, v in probe.items() if k != "labels"}
        self._prev: Dict[int, Tensor] = {}
        self._ctl = None

    def bind(self, controller) -> None:
        self._ctl = controller

    @torch.no_grad()
    def _outputs(self, active: Sequence[int]) -> Dict[int, Tensor]:
        ctl = self._ctl
        model = ctl.model
        dev = next(model.parameters()).device
        inputs = {k: v.to(dev) for k, v in self.probe.items()}
        mask = inputs.get("attention_mask")
        keep = mask.reshape(-1).bool() if mask is not None else None
        outs: Dict[int, Tensor] = {}

        def hook_for(b):
            def hook(module, args, output):
                h = output[0] if isinstance(output, (tuple, list)) else output
                h = h.reshape(-1, h.shape[-1]) if h.dim() > 2 else h
                if keep is not None and h.shape[0] == keep.shape[0]:
                    h = h[keep]
                outs[b] = h.float().cpu()
            return hook

        handles = [ctl.layout.blocks[b].register_forward_hook(hook_for(b)) for b in active]
        was_training = model.training
        model.eval()
        try:
            model(**inputs)
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        return outs

    def interval_end(self, active: Sequence[int]) -> List[Optional[float]]:
        out: List[Optional[float]] = [None] * self._ctl.num_blocks
        cur = self._outputs(active)
        for b in active:
            if b in self._prev and b in cur:
                out[b] = 1.0 - linear_cka(self._prev[b], cur[b])
        self._prev = cur
        return out

    def release(self, block: int) -> None:
        self._prev.pop(block, None)

    def state_dict(self) -> dict:
        return {"prev": dict(self._prev)}

    def load_state_dict(self, state: dict) -> None:
        self._prev = {int(b): t for b, t in state["prev"].items()}
