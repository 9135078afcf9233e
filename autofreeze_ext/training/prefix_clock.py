"""Time spent in the frozen prefix inside an ordinary forward pass."""
from __future__ import annotations

from ..freezing.controller import FreezeController
from ..timing import now


class PrefixClock:
    """Times the frozen prefix inside an ordinary forward pass: from the stem's first call to
    the end of block ``L - 1`` (hooks; no effect on the computation)."""

    def __init__(self, ctl: FreezeController, timers: dict) -> None:
        self.ctl, self.timers, self.t0, self.enabled = ctl, timers, None, True
        self.device = next(ctl.model.parameters()).device
        first = (ctl.layout.embeddings or ctl.layout.blocks)[0]
        self.handles = [first.register_forward_pre_hook(self._start)]
        for i, b in enumerate(ctl.layout.blocks):
            self.handles.append(b.register_forward_hook(self._make_end(i)))

    def _start(self, module, args) -> None:
        # nothing frozen: no prefix to time, and no CUDA synchronisation on every forward pass
        self.t0 = now(self.device) if self.ctl.frozen_depth else None

    def _make_end(self, i: int):
        def end(module, args, output):
            if self.enabled and self.t0 is not None and i == self.ctl.frozen_depth - 1:
                self.timers["prefix_forward"] += now(self.device) - self.t0
                self.t0 = None
        return end

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
