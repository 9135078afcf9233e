"""The interface every per-block signal implements."""
from __future__ import annotations

from typing import List, Optional, Sequence


class Signal:
    """A per-block measurement taken over evaluation intervals.

    The controller calls :meth:`bind` once, :meth:`after_step` after every counted optimizer
    step, :meth:`interval_end` at each interval end (with the active blocks) and
    :meth:`release` when a block freezes. ``seconds`` accumulates the time spent in these
    calls (the signal's overhead, reported per run).
    """

    name: str = "signal"
    #: ``True``: :meth:`interval_end` gives one value per block; ``False``: one float for the model
    per_block: bool = True

    def __init__(self) -> None:
        self.seconds = 0.0

    def bind(self, controller) -> None:
        """Called once with the :class:`~autofreeze_ext.FreezeController`."""

    def after_step(self, step_in_interval: int) -> None:
        """Called after each counted optimizer step (``step_in_interval`` from 1)."""

    def interval_end(self, active: Sequence[int]) -> List[Optional[float]]:
        """One value per block (``None`` outside ``active``); starts the next interval."""
        raise NotImplementedError

    def release(self, block: int) -> None:
        """Free what is kept for ``block`` (it froze)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
