"""The run's record: steps, samples, losses, time per phase and per frozen depth, depth trace."""
from __future__ import annotations

from typing import Optional

from ..record import Record
from .base import Part


class Progress(Part):
    """Keeps ``run.prog``, the run's :class:`~autofreeze_ext.training.record.Record`
    (checkpointed as part ``progress``): per step the time of each phase (prefix forward,
    suffix forward, backward, optimizer, statistics, cache I/O), training and worker time, time
    per frozen depth, the loss, the step and sample counters, the depth trace; per epoch the
    global batch; per (re)start the world size and start-up time. Runs first: every other part
    reads the step it counts."""

    name = "progress"

    def __init__(self) -> None:
        self._first = True
        self._loaded: Optional[dict] = None

    def load_state_dict(self, state: dict) -> None:
        self._loaded = state

    def state_dict(self) -> dict:
        return dict(vars(self.run.prog))

    def start(self, run) -> None:
        """The run's fresh record (built with the run), or the one the checkpoint kept."""
        self.run = run
        if self._loaded is not None:
            run.prog = Record(**self._loaded)
            run.prog.resumed_at.append(run.prog.step)
        run.prog.world_sizes.append({"step": run.prog.step, "world_size": run.ctx.world_size})

    def epoch_start(self, run, epoch: int, planned: list) -> None:
        global_batch = len(planned[0]) * run.world
        if global_batch != run.prog.batch_trace[-1]["global_batch"]:
            run.prog.batch_trace.append({"step": run.prog.step, "epoch": epoch, "global_batch": global_batch})

    def after_step(self, run, res) -> None:
        p, w = run.prog, run.ctx.world_size
        if self._first:
            p.startups.append({"step": p.step, "world_size": w, "startup_s": res.t0 - run.t_start})
            self._first = False
        ph = p.phases
        ph["prefix_forward"] += res.prefix_s
        ph["cache_io"] += res.io_s
        ph["suffix_forward"] += (res.t1 - res.t0) - res.prefix_s - res.io_s
        ph["backward"] += res.t2 - res.t1
        ph["statistics"] += res.stats_s
        ph["optimizer"] += (res.t3 - res.t2) - res.stats_s
        p.train_time += res.seconds
        p.epoch_time += res.seconds
        p.worker_seconds += res.seconds * w
        per_depth = p.depth_seconds.setdefault(str(res.depth_at_start), [0.0, 0])
        per_depth[0] += res.seconds
        per_depth[1] += 1
        p.micro_batches += res.micro_batches
        p.losses.append(res.loss)
        p.step += 1
        p.samples += res.samples
        if run.ctl.frozen_depth != p.depth_trace[-1]["depth"]:
            p.depth_trace.append({"step": p.step, "depth": run.ctl.frozen_depth})

    def add_time(self, run, seconds: float, phase: str) -> None:
        """Time spent outside a step that counts as training (e.g. the cache's epoch-end flush)."""
        run.prog.phases[phase] += seconds
        run.prog.train_time += seconds
        run.prog.epoch_time += seconds
        run.prog.worker_seconds += seconds * run.ctx.world_size

    def end(self, run) -> None:
        run.prog.depth_trace.append({"step": run.prog.step, "depth": run.ctl.frozen_depth})
