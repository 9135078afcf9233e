"""Displacement over path length of each block's weights (the idea behind APF, ICDCS 2021)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .base import Signal


def _flat(params) -> Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in params]) if params else torch.zeros(0)


class ParameterDisplacement(Signal):
    """``|W(t) - W(t-T)| / sum_k |W(t_k) - W(t_{k-1})|`` per block over an interval.

    The path is sampled every ``every`` optimizer steps (and at the interval end), so the cost
    is one copy and one norm of the active blocks' weights per ``every`` steps; memory is two
    fp32 copies of the active blocks' weights (freed block by block as they freeze).

    The ratio is in [0, 1]: near 1 while the block moves steadily in one direction (it is
    still learning), small once its updates mostly cancel (it oscillates around a point).
    Unlike the gradient-norm test it is absolute: a block is judged on its own trajectory, not
    ranked against the others, so nothing has to freeze at a given interval.

    Args:
        every: steps between path samples (default 10).
    """

    name = "displacement"

    def __init__(self, every: int = 10) -> None:
        super().__init__()
        if int(every) != every or every < 1:
            raise ValueError(f"ParameterDisplacement: every must be an integer >= 1, got {every!r}")
        self.every = int(every)
        self._params: List[list] = []
        self._start: Dict[int, Tensor] = {}
        self._last: Dict[int, Tensor] = {}
        self._path: Dict[int, float] = {}

    def bind(self, controller) -> None:
        self._params = [list(ps) for ps in controller._block_params]
        for b in range(controller.frozen_depth, len(self._params)):
            self._reset(b)

    def _reset(self, b: int) -> None:
        w = _flat(self._params[b])
        self._start[b], self._last[b], self._path[b] = w, w.clone(), 0.0

    @torch.no_grad()
    def _sample(self, b: int) -> Tensor:
        w = _flat(self._params[b])
        self._path[b] += float(torch.linalg.vector_norm(w - self._last[b]))
        self._last[b] = w
        return w

    def after_step(self, step_in_interval: int) -> None:
        if step_in_interval % self.every == 0:
            for b in list(self._last):
                self._sample(b)

    @torch.no_grad()
    def interval_end(self, active: Sequence[int]) -> List[Optional[float]]:
        out: List[Optional[float]] = [None] * len(self._params)
        for b in active:
            if b not in self._start:
                self._reset(b)
                continue
            w = self._sample(b)
            disp = float(torch.linalg.vector_norm(w - self._start[b]))
            path = self._path[b]
            out[b] = disp / path if path > 0 else (0.0 if disp == 0 else math.inf)
            self._start[b], self._last[b], self._path[b] = w, w.clone(), 0.0
        return out

    def release(self, block: int) -> None:
        for d in (self._start, self._last, self._path):
            d.pop(block, None)

    def state_dict(self) -> dict:
        return {"every": self.every, "path": dict(self._path),
                "start": {b: t.cpu() for b, t in self._start.items()},
                "last": {b: t.cpu() for b, t in self._last.items()}}

    def load_state_dict(self, state: dict) -> None:
        dev = {b: (ps[0].device if ps else torch.device("cpu")) for b, ps in enumerate(self._params)}
        self._path = {int(b): float(v) for b, v in state["path"].items()}
        self._start = {int(b): t.to(dev[int(b)]) for b, t in state["start"].items()}
        self._last = {int(b): t.to(dev[int(b)]) for b, t in state["last"].items()}
