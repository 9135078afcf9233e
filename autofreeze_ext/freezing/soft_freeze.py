"""Soft transition: a block's updates fade to zero before it freezes (FreezeOut's mechanism)."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn


class SoftFreeze:
    """Anneals the updates of the blocks about to freeze over ``steps`` optimizer steps.

    When a policy decides to freeze, the controller calls :meth:`start` instead of freezing;
    for the next ``steps`` optimizer steps the update of those blocks is scaled by
    ``1 - k / steps`` (k = 1..steps): before each step their weights are copied, after it they
    are moved back towards the copy (``w = old + scale * (w - old)``). The update itself is
    scaled, not the learning rate, so it works with every optimizer (Adam's normalisation would
    undo a gradient scale). At the end the controller freezes them. Cost: one copy of the
    annealed blocks' weights per step while annealing.
    """

    def __init__(self, steps: int) -> None:
        if int(steps) != steps or steps < 1:
            raise ValueError(f"anneal_steps must be an integer >= 1, got {steps!r}")
        self.steps = int(steps)
        self.params: List[nn.Parameter] = []
        self.target: Optional[int] = None
        self.done = 0
        self._old: Optional[List[torch.Tensor]] = None

    @property
    def active(self) -> bool:
        return self.target is not None

    def start(self, params: List[nn.Parameter], target: int, done: int = 0) -> None:
        self.params, self.target, self.done, self._old = list(params), int(target), int(done), None

    @torch.no_grad()
    def before_step(self) -> None:
        if self.active:
            self._old = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def after_step(self) -> Optional[int]:
        """Scale this step's update; the depth to freeze to once the last step is done."""
        if not self.active:
            return None
        self.done += 1
        scale = max(0.0, 1.0 - self.done / self.steps)
        if self._old is not None:
            for p, old in zip(self.params, self._old):
                p.sub_(old).mul_(scale).add_(old)
        self._old = None
        if self.done < self.steps:
            return None
        target, self.target, self.params = self.target, None, []
        return target

    def state_dict(self) -> dict:
        return {"target": self.target, "done": self.done}
