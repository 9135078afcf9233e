"""The cost goal (``--mode-goal cost``): shed workers at a freeze when fewer finish in time."""
from __future__ import annotations

import logging
import os
from typing import Optional

from ..._io import atomic_json
from ...parallel.context import DistContext, time_allreduce
from ...planning.planner import ThroughputModel, choose_workers
from ...planning.step_probe import StepTiming
from ..comm import from_rank0
from ..config import FinetuneConfig
from ..record import Record
from .base import Outcome, Part, stop
from .step_timer import StepTimer

log = logging.getLogger("autofreeze_ext")

#: the stop reason when the cost goal asks for another number of workers
SCALE = "scale"


class CostPlanner:
    """Live ``--mode-goal cost``: after each freeze, read the run's step probe at the new depth
    (``probe_steps`` steps, the first two left out) and time one all-reduce of the active
    gradients, split the step into compute per sample and communication, and predict the rest
    of the run on each smaller number of workers (a divisor of the global batch, at least
    ``min_workers``): ``steps_left * (B / W' * compute + allreduce(W'))`` plus a restart (this
    launch's measured start-up) when ``W'`` differs, with
    :class:`~autofreeze_ext.planning.planner.ThroughputModel` (the all-reduce scaled by the ring
    factor ``(W'-1)/W'``). The cheapest ``W'`` in worker-seconds that still finishes before the
    deadline wins; rank 0 decides and broadcasts. The deadline defaults to full fine-tuning's
    time on the starting workers, projected from the step time before the first freeze.
    Predictions are kept in the report (``planner``) with the step time measured after the
    relaunch."""

    def __init__(self, cfg: FinetuneConfig, ctx: DistContext, prog: Record, state: dict, ddp, total_steps: int) -> None:
        self.cfg, self.ctx, self.prog, self.state, self.ddp, self.total = cfg, ctx, prog, state, ddp, total_steps

    def on_timing(self, timing: StepTiming, step: int):
        """A step probe's reading at ``timing.key == (depth, global batch, workers)``; a scale request
        (``{"world_size", "step", "from_world_size"}``) when fewer workers pay."""
        depth, t_step = timing.key[0], timing.step_s
        pending = self.state["planner"][-1] if self.state["planner"] else None
        if pending is not None and pending.get("measured_step_s") is None and pending["chosen"] == self.ctx.world_size:
            # the prediction's check, after the relaunch (comparable when still at its depth)
            pending["measured_step_s"], pending["measured_at_depth"] = t_step, depth
            if depth == pending["depth"]:
                return None
        if self.ddp is None or self.ctx.world_size < 2:  # one worker: nothing to shed
            return None
        if "full_step_s" not in self.state and depth == 0:
            self.state["full_step_s"] = t_step
            self.state["deadline_s"] = self.cfg.goal.deadline_s or self.total * t_step
            return None
        if depth == 0 or any(p["depth"] == depth for p in self.state["planner"]):
            return None
        return self._decide(depth, t_step, step)

    def _decide(self, depth: int, t_step: float, step: int):
        w, b = self.ctx.world_size, self.cfg.optim.batch_size
        nbytes = 4 * self.ddp.comm[depth]["params"]
        t_ar = time_allreduce(self.ctx, nbytes)
        compute = max(t_step - t_ar, 1e-9) * w / b
        restart = self.cfg.goal.restart_s
        if restart is None:
            restart = self.prog.startups[-1]["startup_s"] if self.prog.startups else 0.0
        left = self.total - step
        elapsed = self.prog.train_time
        deadline = self.state.get("deadline_s") or self.cfg.goal.deadline_s or float("inf")
        # the planner's model from this one measurement: bandwidth-bound ring all-reduce (alpha 0)
        model = ThroughputModel({depth: compute}, {depth: nbytes}, alpha=0.0,
                                beta=t_ar / (nbytes * 2 * (w - 1) / w), restart_s=restart)
        best, options = choose_workers(model, depth, left, w, b, elapsed, deadline, self.cfg.goal.min_workers)
        entry = {"step": step, "depth": depth, "world_size": w, "chosen": best["workers"],
                 "step_s_now": t_step, "allreduce_s": t_ar, "compute_s_per_sample": compute,
                 "predicted_step_s": best["step_s"], "predicted_remaining_s": best["remaining_s"],
                 "deadline_s": deadline, "elapsed_s": elapsed, "restart_s": restart, "options": options,
                 "measured_step_s": None if best["workers"] != w else t_step,
                 "measured_at_depth": None if best["workers"] != w else depth}
        entry = from_rank0(entry, self.ctx)  # rank 0's measurement decides for everyone
        self.state["planner"].append(entry)
        if self.ctx.is_main:
            log.info("planner: depth %d, step %.3f s on %d workers (all-reduce %.3f s) -> %d workers, predicted "
                     "%.3f s/step, %.0f s to go (deadline %.0f s, elapsed %.0f s)", depth, t_step, w, t_ar,
                     entry["chosen"], entry["predicted_step_s"], entry["predicted_remaining_s"], deadline, elapsed)
        if entry["chosen"] == w:
            return None
        return {"world_size": entry["chosen"], "step": step, "from_world_size": w}


class CostGoal(Part):
    """Runs :class:`CostPlanner` after each step when the cost goal is on with several workers,
    or, after a relaunch on one worker, only to measure the step time its prediction promised.
    When it asks for another number of workers: checkpoint, stop, and ``scale_request.json``
    (written at the end, after the checkpoint it resumes from)."""

    name = "cost_goal"

    def __init__(self, timer: StepTimer) -> None:
        self.timer = timer
        self.state: dict = {"planner": []}
        self.planner: Optional[CostPlanner] = None
        self.request: Optional[dict] = None

    def load_state_dict(self, state: dict) -> None:
        self.state = {"planner": [], **state}

    def state_dict(self) -> dict:
        return self.state

    def start(self, run) -> None:
        cfg, ctx = run.cfg, run.ctx
        if cfg.goal.kind == "cost" and ctx.distributed and not run.ckpt_path:
            raise ValueError("--mode-goal cost sheds workers through a checkpoint: pass --checkpoint-dir")
        active = cfg.goal.kind == "cost" and ctx.world_size > 1
        pending = self.state["planner"] and self.state["planner"][-1].get("measured_step_s") is None
        if active or pending:  # a world of one only measures
            self.planner = CostPlanner(cfg, ctx, run.prog, self.state, run.ddp, run.total_steps)

    def after_step(self, run, res) -> Optional[Outcome]:
        if self.planner is None:
            return None
        timing = self.timer.reading(run, res)
        req = self.planner.on_timing(timing, run.prog.step) if timing is not None else None
        if req is None:
            return None
        self.request = req
        log.info("planner: continuing on %d workers instead of %d (checkpoint at step %d); relaunch with "
                 "`autofreeze launch` or torchrun --nproc_per_node %d ... --resume", req["world_size"],
                 run.ctx.world_size, run.prog.step, req["world_size"])
        return stop(SCALE, checkpoint=True)  # the relaunch resumes from this step's checkpoint

    def end(self, run) -> None:
        if self.request is not None and run.ctx.is_main:  # after the checkpoint it resumes from
            atomic_json(os.path.join(run.cfg.run.checkpoint_dir, "scale_request.json"), self.request)
