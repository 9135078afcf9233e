"""The run's one step probe as a part: the packer and the cost goal read its readings."""
from __future__ import annotations

from typing import Optional

from ...planning.step_probe import StepProbe
from .base import Part


class StepTimer(Part):
    """Feeds each step to a :class:`~autofreeze_ext.planning.step_probe.StepProbe` keyed by
    (frozen depth, global batch, workers) and leaves the reading, when a step completes one, in
    ``run.step_timing`` for the parts after it (packer, cost goal); ``None`` otherwise. The
    probe's measurement in progress is checkpointed; a relaunch on another number of workers is
    a new setting, measured afresh (what the cost goal's prediction is checked against)."""

    name = "step_timer"  # its state in the checkpoint: the step probe it feeds

    def __init__(self) -> None:
        self.probe: Optional[StepProbe] = None
        self._state: Optional[dict] = None
        self.global_batch = 0

    def load_state_dict(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> Optional[dict]:
        return self.probe.state_dict() if self.probe is not None else self._state

    def start(self, run) -> None:
        self.probe = StepProbe(run.cfg.goal.probe_steps)
        if self._state:
            self.probe.load_state_dict(self._state)

    def epoch_start(self, run, epoch: int, planned: list) -> None:
        self.global_batch = len(planned[0]) * run.world  # this epoch's batch (the last one may be short)

    def setting(self, run) -> tuple:
        return (run.ctl.frozen_depth, self.global_batch, run.world)

    def steps_seen(self, run) -> int:
        """Steps the probe has seen at the run's current setting."""
        return self.probe.seen if self.probe is not None and self.probe.key == self.setting(run) else 0

    def after_step(self, run, res) -> None:
        run.step_timing = self.probe.observe(self.setting(run), res.seconds, res.t3 - res.t2, res.samples)
