"""The run's one step probe as a part: the packer and the cost goal read its readings."""
from __future__ import annotations

from typing import Optional

from ...planning.step_probe import StepProbe, StepTiming
from .base import Part


class StepTimer(Part):
    """Feeds each step to a :class:`~autofreeze_ext.planning.step_probe.StepProbe` keyed by
    (frozen depth, global batch, workers). :meth:`reading` gives the step's reading (None
    unless the step completed one) to the parts that use it (packer, cost goal): the step is
    observed once, by whichever asks first, so the order of the parts does not matter. The
    probe's measurement in progress is checkpointed; a relaunch on another number of workers is
    a new setting, measured afresh (what the cost goal's prediction is checked against)."""

    name = "step_timer"  # its state in the checkpoint: the step probe it feeds

    def __init__(self) -> None:
        self.probe: Optional[StepProbe] = None
        self._state: Optional[dict] = None
        self.global_batch = 0
        self._res = None  # the step last observed, and its reading
        self._timing: Optional[StepTiming] = None

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

    def reading(self, run, res) -> Optional[StepTiming]:
        """The probe's reading when step ``res`` completed one at the run's setting, else None."""
        if res is not self._res:
            self._res = res
            self._timing = self.probe.observe(self.setting(run), res.seconds, res.t3 - res.t2, res.samples)
        return self._timing

    def after_step(self, run, res) -> None:
        self.reading(run, res)  # every step is observed, read or not
