"""The interface every part of the training loop implements (all methods optional), and the
typed outcome a part gives the loop after a step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Outcome:
    """What a part asks of the loop after a step (or at the start): nothing (:data:`CONTINUE`),
    a checkpoint at this step (:data:`CHECKPOINT`), or the run's end (:func:`stop`, with the
    reason the report records; with ``checkpoint`` the step is checkpointed first). The loop
    merges the parts' outcomes with ``|``: the first stop reason in the parts' order wins, a
    checkpoint asked by any part is written."""

    stop: Optional[str] = None
    checkpoint: bool = False

    def __or__(self, other: Optional["Outcome"]) -> "Outcome":
        if other is None:
            return self
        return Outcome(self.stop or other.stop, self.checkpoint or other.checkpoint)


CONTINUE = Outcome()
CHECKPOINT = Outcome(checkpoint=True)
#: the stop reason of ``--stop-after-steps`` (the loop's own; a run that ends there is finished)
STOP_AFTER_STEPS = "stop_after_steps"


def stop(reason: str, checkpoint: bool = False) -> Outcome:
    """End the run after this step for ``reason`` (checkpointed first with ``checkpoint``)."""
    return Outcome(stop=reason, checkpoint=checkpoint)


class Part:
    """A piece of the training loop, in the style of Lightning callbacks.

    The loop calls, in the order the parts were given: :meth:`start` once (after the run is
    built and restored), :meth:`epoch_start` before an epoch's first step, :meth:`step_meter`
    before each optimizer step, :meth:`after_step` after it, :meth:`step_done` once the step's
    checkpoint (if one was due) is written, :meth:`end` once (``run.stopped`` then says why
    the loop ended early, None when it ran to its end). :meth:`start` and :meth:`after_step`
    return an :class:`Outcome` (None: continue); parts never set flags on the run for each
    other. A part with state implements :meth:`state_dict` / :meth:`load_state_dict`; the
    checkpoint keeps them under the part's ``name``.
    """

    name = ""

    def start(self, run) -> Optional[Outcome]:
        return None

    def epoch_start(self, run, epoch: int, planned: list) -> None:
        pass

    def step_meter(self, run):
        """An activation-memory meter for the coming step's first forward, or None (the packer's)."""
        return None

    def after_step(self, run, res) -> Optional[Outcome]:
        return None

    def step_done(self, run, outcome: Outcome) -> None:
        pass

    def end(self, run) -> None:
        pass

    def state_dict(self) -> Optional[dict]:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass
