"""Throughput model, execution planner and simulator for data-parallel AutoFreeze.

The model (all inputs measured, none assumed except where a caller says so):

* ``compute_s[d]``: seconds of forward + backward + optimizer work per *sample* when ``d``
  blocks are frozen (prefix forward or cache read included), on one worker;
* ``allreduce_bytes[d]``: gradient bytes DDP all-reduces per step at depth ``d``;
* an all-reduce cost ``alpha * 2(W-1) + beta * bytes * 2(W-1)/W`` seconds (ring all-reduce:
  ``2(W-1)`` latency-bound rounds, each worker sends and receives ``2(W-1)/W`` of the buffer),
  with ``alpha``/``beta`` fitted to measured all-reduce times;
* ``restart_s``: the cost of checkpointing and restarting the job on another number of workers.

A step of a global batch ``B`` on ``W`` workers takes
``B / W * compute_s[d] + allreduce(W, bytes[d])`` -- no overlap of communication with the
backward pass is assumed (DDP does overlap, so this over-estimates communication; the
comparison with measured step times in ``BENCHMARKS.md`` says by how much).

Execution goals (a freezing *schedule* -- the fraction of training spent at each depth -- is
taken from a run, since when blocks freeze depends on the gradients, not on the workers):

* ``time``: run every phase on all ``max_workers`` workers (finish soonest);
* ``cost``: start on ``max_workers``; at each freeze choose a number of workers (never
  growing: freezing only makes work cheaper; a divisor of the global batch) so that the job
  costs the fewest worker-seconds while finishing no later than a deadline -- by default the
  time full fine-tuning takes on ``max_workers``; each change pays ``restart_s`` on the new
  workers. :func:`plan` finds the best worker counts in hindsight (it knows every phase);
  :func:`plan_live` replays what the running job decides, phase by phase, with the same
  :func:`choose_workers` the live cost goal calls (it knows only the phase it is entering).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass
class ThroughputModel:
    compute_s: Dict[int, float]  #: depth -> seconds per sample on one worker
    allreduce_bytes: Dict[int, float]  #: depth -> bytes all-reduced per step
    alpha: float = 0.0  #: seconds per ring round
    beta: float = 0.0  #: seconds per byte moved
    restart_s: float = 0.0  #: checkpoint + relaunch on a new number of workers
    notes: List[str] = field(default_factory=list)

    def allreduce_s(self, workers: int, nbytes: float) -> float:
        if workers <= 1 or nbytes <= 0:
            return 0.0
        return self.alpha * 2 * (workers - 1) + self.beta * nbytes * 2 * (workers - 1) / workers

    def step_s(self, depth: int, workers: int, global_batch: int) -> float:
        return global_batch / workers * self.compute_s[depth] + self.allreduce_s(workers, self.allreduce_bytes[depth])


def fit_allreduce(samples: Sequence[Tuple[int, float, float]]) -> Tuple[float, float]:
    """Least-squares ``(alpha, beta)`` from measured ``(workers, bytes, seconds)`` all-reduces."""
    import numpy as np

    rows = [(2 * (w - 1), b * 2 * (w - 1) / w) for w, b, _ in samples]
    x = np.array(rows, dtype=float)
    y = np.array([t for _, _, t in samples], dtype=float)
    (alpha, beta), *_ = np.linalg.lstsq(x, y, rcond=None)
    return max(float(alpha), 0.0), max(float(beta), 0.0)


def schedule_from_report(report: dict) -> List[Tuple[int, float]]:
    """``[(depth, fraction of the run's steps at that depth), ...]`` from a finetune report."""
    trace = report["frozen_depth"]
    total = report["steps"]
    out: Dict[int, float] = {}
    for a, b in zip(trace, trace[1:]):
        if b["step"] > a["step"]:
            out[a["depth"]] = out.get(a["depth"], 0.0) + (b["step"] - a["step"]) / total
    return sorted(out.items())


def compute_from_report(report: dict, skip: int = 1) -> Dict[int, float]:
    """Seconds per sample at each frozen depth, from the training time between evaluations
    (which exclude evaluation) of a single-process report; the first ``skip`` evaluation
    windows after a depth change are left out (they include the freeze itself and, with a
    cache, the first epoch's writes)."""
    trace = report["frozen_depth"]
    batch = report["config"]["batch_size"]

    def depth_at(step):
        return max(d["depth"] for d in trace if d["step"] <= step) if step else trace[0]["depth"]

    windows: Dict[int, List[Tuple[float, int, int]]] = {}  # depth -> (seconds, steps, index in its run)
    prev_step, prev_t, run_depth, run_len = 0, 0.0, None, 0
    for e in report["evals"]:
        d0, d1 = depth_at(prev_step), depth_at(e["step"] - 1)
        if d0 == d1:
            run_len = run_len + 1 if d0 == run_depth else 1
            run_depth = d0
            windows.setdefault(d0, []).append((e["train_time_s"] - prev_t, e["step"] - prev_step, run_len))
        else:
            run_depth, run_len = None, 0
        prev_step, prev_t = e["step"], e["train_time_s"]
    out = {}
    for d, w in windows.items():
        settled = [x for x in w if d == 0 or x[2] > skip] or w  # a depth held briefly: its only windows
        out[d] = sum(x[0] for x in settled) / (sum(x[1] for x in settled) * batch)
    for d, _ in schedule_from_report(report):
        if d not in out:  # no whole window at this depth: the nearest shallower depth (an over-estimate)
            shallower = [k for k in out if k < d]
            out[d] = out[max(shallower)] if shallower else min(out.values())
    return out


def worker_choices(max_workers: int, global_batch: int, min_workers: int = 1) -> List[int]:
    """Worker counts a goal may choose, largest first: the divisors of the global batch between
    ``min_workers`` and ``max_workers`` (each worker then gets an equal share of a batch)."""
    return [w for w in range(max_workers, 0, -1) if global_batch % w == 0 and w >= min_workers] or [max_workers]


def choose_workers(model: ThroughputModel, depth: int, steps_left: int, workers_now: int, global_batch: int,
                   elapsed_s: float, deadline_s: float, min_workers: int = 1) -> Tuple[dict, List[dict]]:
    """The cost goal's choice at a freeze (the live planner's and, phase by phase, the offline
    plan's model): for each count in :func:`worker_choices`, the rest of the run at ``depth``
    (plus ``model.restart_s`` when the count changes); among those that meet the deadline the
    fewest worker-seconds (ties: more workers), else the soonest to finish. Returns
    ``(best, options)``."""
    options = []
    for w in worker_choices(workers_now, global_batch, min_workers):
        step = model.step_s(depth, w, global_batch)
        rest = steps_left * step + (model.restart_s if w != workers_now else 0.0)
        options.append({"workers": w, "step_s": step, "remaining_s": rest, "worker_s": w * rest,
                        "meets_deadline": elapsed_s + rest <= deadline_s})
    ok = [o for o in options if o["meets_deadline"]] or [min(options, key=lambda o: o["remaining_s"])]
    return min(ok, key=lambda o: (o["worker_s"], -o["workers"])), options


@dataclass
class Plan:
    goal: str
    workers: List[int]  #: per phase
    phases: List[Tuple[int, float]]  #: (depth, fraction of steps)
    time_s: float
    worker_s: float
    deadline_s: Optional[float] = None


def evaluate_plan(model: ThroughputModel, phases, workers, total_steps: int, global_batch: int) -> Tuple[float, float]:
    """Wall seconds and worker-seconds of running ``phases`` on ``workers`` (restarts included)."""
    time_s = worker_s = 0.0
    prev = workers[0]
    for (depth, frac), w in zip(phases, workers):
        t = frac * total_steps * model.step_s(depth, w, global_batch)
        if w != prev:
            t += model.restart_s
        prev = w
        time_s += t
        worker_s += t * w
    return time_s, worker_s


def plan(model: ThroughputModel, phases: Sequence[Tuple[int, float]], total_steps: int, global_batch: int,
         max_workers: int, goal: str = "time", deadline_s: Optional[float] = None,
         choices: Optional[Sequence[int]] = None) -> Plan:
    """Workers per phase for ``goal`` ("time" or "cost"); see the module docstring."""
    phases = list(phases)
    if goal == "time":
        ws = [max_workers] * len(phases)
        t, c = evaluate_plan(model, phases, ws, total_steps, global_batch)
        return Plan("time", ws, phases, t, c)
    if goal != "cost":
        raise ValueError(f"goal must be 'time' or 'cost', got {goal!r}")
    if deadline_s is None:  # full fine-tuning on all workers
        deadline_s = total_steps * model.step_s(0, max_workers, global_batch)
    opts = sorted(set(choices), reverse=True) if choices else worker_choices(max_workers, global_batch)
    opts = [w for w in opts if global_batch % w == 0] or [max_workers]
    best: Optional[Plan] = None
    # the first phase runs on the whole allocation (when blocks will freeze is not known
    # yet); later phases on non-increasing worker counts, since freezing only makes the
    # remaining work cheaper
    for rest in itertools.combinations_with_replacement(opts, len(phases) - 1):
        ws = (max_workers,) + rest
        if rest and rest[0] > max_workers:
            continue
        t, c = evaluate_plan(model, phases, list(ws), total_steps, global_batch)
        if t <= deadline_s * (1 + 1e-9) and (best is None or c < best.worker_s):
            best = Plan("cost", list(ws), phases, t, c, deadline_s)
    if best is None:  # nothing meets the deadline: the fastest plan
        best = plan(model, phases, total_steps, global_batch, max_workers, "time")
        best.goal, best.deadline_s = "cost (deadline unreachable: ran as time)", deadline_s
    return best


def plan_live(model: ThroughputModel, phases: Sequence[Tuple[int, float]], total_steps: int, global_batch: int,
              max_workers: int, deadline_s: Optional[float] = None, min_workers: int = 1) -> Plan:
    """The live cost goal on this schedule: at each freeze (a phase start) :func:`choose_workers`
    -- the function the running job calls -- with the steps left, the time spent and the
    deadline, assuming (as the job must) that the rest runs at the depth it is entering."""
    phases = list(phases)
    if deadline_s is None:  # full fine-tuning on all workers
        deadline_s = total_steps * model.step_s(0, max_workers, global_batch)
    workers: List[int] = []
    for k, (depth, _) in enumerate(phases):
        w = workers[-1] if workers else max_workers
        if k > 0:
            elapsed = evaluate_plan(model, phases[:k], workers, total_steps, global_batch)[0]
            left = round(total_steps * sum(f for _, f in phases[k:]))
            w = choose_workers(model, depth, left, w, global_batch, elapsed, deadline_s, min_workers)[0]["workers"]
        workers.append(w)
    t, c = evaluate_plan(model, phases, workers, total_steps, global_batch)
    return Plan("cost (live chooser)", workers, phases, t, c, deadline_s)
