"""End the run when the policy judges training converged (``--stop-when-converged``)."""
from __future__ import annotations

import logging
from typing import Optional

from .base import Outcome, Part, stop

log = logging.getLogger("autofreeze_ext")

#: the stop reason (``run.stopped``) once the policy has asked the run to end
CONVERGED = "converged"


class ConvergedStop(Part):
    """After each step: the policy's :meth:`~autofreeze_ext.policies.FreezePolicy.should_stop`
    ends the run (a finished run: the dev set is scored at the stop, the model is saved). The
    decision is the same on every rank (policies see rank 0's statistics)."""

    def start(self, run) -> Optional[Outcome]:
        """A run resumed after its policy stopped it trains no further."""
        return self.after_step(run, None)

    def after_step(self, run, res) -> Optional[Outcome]:
        if not run.ctl.policy.should_stop():
            return None
        if run.ctx.is_main:
            log.info("step %d: the policy judged training converged; stopping (%s)", run.prog.step,
                     run.ctl.policy.describe())
        return stop(CONVERGED)
