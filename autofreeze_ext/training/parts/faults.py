"""Fault injection for the resume tests: a part the tests install (never read from the
environment by production code)."""
from __future__ import annotations

import os
import signal
from typing import Optional

from .base import Part


class KillAt(Part):
    """``kill -9`` this worker after step ``step`` (after its checkpoint, if one is due) on rank
    ``rank``, in the first launch only (torchrun's restarts run on); with ``agent=True`` the
    torchrun agent first (a lost node)."""

    def __init__(self, step: int, rank: Optional[int] = 0, agent: bool = False) -> None:
        self.step, self.rank, self.agent = int(step), rank, agent

    def step_done(self, run, outcome) -> None:
        if run.prog.step != self.step or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return
        if self.agent:
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        if self.rank is None or run.ctx.rank == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)
