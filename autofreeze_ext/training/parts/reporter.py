"""The run's report, built when the loop ends."""
from __future__ import annotations

from typing import Optional

from ..report import make_report
from .base import Part


class Reporter(Part):
    """Builds the report (:func:`~autofreeze_ext.training.report.make_report`: times, phases,
    evaluations, freezing history, cache and distributed figures, the packer's and the cost
    goal's decisions) in :meth:`end`, after the parts before it (the model saver included) have
    finished; :attr:`report` holds it."""

    def __init__(self, packer, cost_goal) -> None:
        self.packer, self.cost_goal = packer, cost_goal
        self.report: Optional[dict] = None

    def end(self, run) -> None:
        self.report = make_report(run, self.packer, self.cost_goal)
