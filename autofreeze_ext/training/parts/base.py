"""The interface every part of the training loop implements (all methods optional)."""
from __future__ import annotations

from typing import Optional


class Part:
    """A piece of the training loop, in the style of Lightning callbacks.

    The loop calls, in the order the parts were given: :meth:`start` once (after the run is
    built and restored), :meth:`epoch_start` before an epoch's first step, :meth:`before_step`
    and :meth:`after_step` around each optimizer step, :meth:`end` once. A part stops the run
    early by setting ``run.stop`` to a reason, and asks for a checkpoint at this step with
    ``run.checkpoint_due = True``. A part with state implements :meth:`state_dict` /
    :meth:`load_state_dict`; the :class:`Checkpointer` saves them under the part's ``name``.
    """

    name = ""

    def start(self, run) -> None:
        pass

    def epoch_start(self, run, epoch: int, planned: list) -> None:
        pass

    def before_step(self, run) -> None:
        pass

    def after_step(self, run, res) -> None:
        pass

    def end(self, run) -> None:
        pass

    def state_dict(self) -> Optional[dict]:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass
