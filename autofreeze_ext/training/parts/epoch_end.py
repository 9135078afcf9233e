"""What happens after an epoch's last step: the cache's flush (training time), epoch counters."""
from __future__ import annotations

import time

from .base import Part


class EpochEnd(Part):
    """At an epoch's last step: flush the activation cache (its time counts as cache I/O and
    training time), close the epoch's time and move the epoch counter."""

    def __init__(self, progress) -> None:
        self.progress = progress

    def after_step(self, run, res) -> None:
        if run.sampler.position != run.steps_per_epoch:
            return
        if run.cache is not None:
            t = time.perf_counter()
            run.cache.flush()
            self.progress.add_time(run, time.perf_counter() - t, "cache_io")
        run.prog.epoch_times.append(run.prog.epoch_time)
        run.prog.epoch_time = 0.0
        run.prog.epoch += 1
