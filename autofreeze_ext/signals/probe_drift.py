"""Representation drift on a fixed probe batch (in the spirit of Egeria, EuroSys 2023)."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from .base import Signal
from .probe import ProbeForward, as_forward


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
    forward pass of the probe batch per interval (shared with :class:`ProbeLoss` when both are
    built on the same :class:`ProbeForward`); memory: one output per block.

    Args:
        probe: keyword inputs of the model for the probe batch (e.g. ``input_ids`` and
            ``attention_mask`` of 64 training samples), or a :class:`ProbeForward`.
    """

    name = "probe_drift"

    def __init__(self, probe: Union[Mapping[str, Tensor], ProbeForward]) -> None:
        super().__init__()
        self.forward = as_forward(probe)
        self._prev: Dict[int, Tensor] = {}
        self._ctl = None

    def bind(self, controller) -> None:
        self._ctl = controller

    def interval_end(self, active: Sequence[int]) -> List[Optional[float]]:
        out: List[Optional[float]] = [None] * self._ctl.num_blocks
        outs, _ = self.forward.run(self._ctl, list(active))
        cur = {b: outs[b] for b in active if b in outs}
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
