"""Replay freezing policies offline on full fine-tuning runs that recorded every signal.

Full runs of ``bench_policies.py`` observe (``--record-signals``): each interval's gradient
norms, displacement, probe drift and probe loss per block are in their reports. This script
feeds those intervals to a policy, as the controller would (the frozen depth follows the
policy's decisions; frozen blocks' values are hidden), and reports when each policy would
have frozen, how deep, whether before the model started learning, and the speedup a cost
model predicts. No training run is spent, and no dev-set number is used: the predictions come
from training-side signals only, so choosing settings on them does not look at the dev set.

    python benchmarks/replay_policies.py [--out benchmarks/results/policies]

Approximations, said where they matter:
* After a real freeze the active blocks' signals differ a little from the full run's.
* Longer intervals for the gradient test (``x2``, ``x4``) merge consecutive intervals: the norm
  of the merged mean gradient is approximated by the step-weighted mean of the norms (an upper
  bound: noise that would cancel over the longer interval does not).
* Cost model per step, in units of one block's forward+backward: an active block costs 1; a
  frozen block costs ``FORWARD_COST`` (forward only) without the cache; with the cache it costs
  that on every row's first visit after the freeze (a miss: the row is computed and written) and
  0 after (a hit), and nothing else is credited. With rows reshuffled every epoch, a freeze at a
  fraction ``p`` into epoch ``e`` misses on every step of the rest of epoch ``e`` and on a share
  ``p`` of epoch ``e + 1``'s steps (the rows visited before the freeze), then hits: one epoch of
  misses in all, whatever ``p`` (a freeze in the last epoch gets no credit).
  Embeddings, head and optimizer are not modelled. ``FORWARD_COST`` was calibrated on the
  same-run measurements of BENCHMARKS.md's SST-2 seed-0 compare without the cache (freezing
  schedule 1, 2, 4, 5 blocks at steps 150, 200, 250, 350 of 750): predicted 1.74x, measured
  1.76x; static:half predicted 1.60x, measured 1.59x. With the cache the same schedule is
  predicted at 1.99x against a measured 2.21x: the model credits hits only, and is conservative
  where the cache also saves what it does not model (the embeddings' forward).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from autofreeze_ext.policies import (FreezePolicy, GradientNormTest, GuardedGradientTest, Guards,  # noqa: E402
                                     IntervalStats, StabilityPolicy)

DRIFT_GRID = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02]
DISPLACEMENT_GRID = [0.4, 0.5, 0.6]
FORWARD_COST = 0.25  # a frozen block's forward pass relative to its forward+backward


def load_full(out: str) -> Dict[Tuple[str, int], dict]:
    runs = {}
    for task in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        d = os.path.join(out, task, "full")
        for seed_dir in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            path = os.path.join(d, seed_dir, "report.json")
            if os.path.exists(path):
                r = json.load(open(path))
                if any("signals" in h for h in r["controller_history"]):
                    runs[(task, int(seed_dir[4:]))] = r
    return runs


def intervals(report: dict, merge: int = 1) -> List[dict]:
    ivs = [h for h in report["controller_history"] if h["event"] == "interval"]
    if merge == 1:
        return ivs
    out = []
    for k in range(0, len(ivs) - merge + 1, merge):
        group = ivs[k:k + merge]
        steps = [g["step"] - (ivs[k + j - 1]["step"] if k + j else 0) for j, g in enumerate(group)]
        norms = [sum(s * g["norms"][b] for s, g in zip(steps, group)) / sum(steps)
                 for b in range(len(group[0]["norms"]))]
        out.append({**group[-1], "norms": norms})
    return out


def replay(policy: FreezePolicy, ivs: List[dict], num_blocks: int) -> List[Tuple[int, int]]:
    """``[(step, depth)]`` after each interval, the depth following the policy."""
    depth, prev, trace = 0, 0, []
    for h in ivs:
        hide = lambda v: [None if b < depth else x for b, x in enumerate(v)]  # noqa: E731
        sig = {k: (hide(v) if isinstance(v, list) else v) for k, v in h.get("signals", {}).items()}
        st = IntervalStats(step=h["step"], epoch=h["epoch"], frozen_depth=depth, num_blocks=num_blocks,
                           max_depth=num_blocks - 1, interval_steps=h["step"] - prev, norms=hide(h["norms"]),
                           signals=sig)
        depth = max(depth, min(int(policy.decide(st)), num_blocks - 1))
        prev = h["step"]
        trace.append((h["step"], depth))
    return trace


def predicted_speedup(trace: List[Tuple[int, int]], steps: int, spe: int, n: int, cached: bool) -> float:
    return steps * n / modelled_cost(trace, steps, spe, n, cached)


def modelled_cost(trace: List[Tuple[int, int]], steps: int, spe: int, n: int, cached: bool) -> float:
    """The cost model's training cost of ``steps`` steps under a freezing ``trace`` (units: one
    block's forward+backward for one step; full fine-tuning costs ``steps * n``)."""
    froze_at = {}  # block -> step it froze
    for step, depth in trace:
        for b in range(depth):
            froze_at.setdefault(b, step)
    cost = 0.0
    for t in range(steps):
        for b in range(n):
            s = froze_at.get(b)
            cost += 1.0 if s is None or t < s else FORWARD_COST * (miss_share(s, t, spe) if cached else 1.0)
    return cost


def modelled_share(r: dict, full: dict, step: Optional[int] = None) -> float:
    """A run's cost up to ``step`` (default: where it ended, early stops included) in the cost
    model, as a share of full fine-tuning's fixed budget (``full``: the full run of the same
    seed); its freezing schedule counted, its signal overhead not."""
    trace = [(d["step"], d["depth"]) for d in r["frozen_depth"]]
    cost = modelled_cost(trace, r["steps"] if step is None else step, r["steps_per_epoch"], r["num_blocks"],
                         r["mode"].endswith("+cache"))
    return cost / (full["steps"] * full["num_blocks"])


def modelled_speedup(r: dict, full: dict) -> float:
    """Full fine-tuning's fixed budget over the run's modelled cost (a stopped run: to its stop)."""
    return 1.0 / modelled_share(r, full)


def miss_share(froze: int, t: int, spe: int) -> float:
    """Expected share of step ``t``'s rows that miss the cache for a block frozen at step
    ``froze`` (``t >= froze``; ``spe`` steps an epoch, rows reshuffled each epoch): every row
    misses once, on its first visit after the freeze; the rest of the freeze's epoch all first
    visits, the next epoch the rows visited before the freeze (a share ``(froze % spe) / spe``),
    later epochs none."""
    epochs_after = t // spe - froze // spe
    return 1.0 if epochs_after == 0 else (froze % spe) / spe if epochs_after == 1 else 0.0


def learning_start(report: dict) -> Optional[int]:
    """First step whose 50-step mean training loss is below 0.9x the first 20 steps' mean."""
    losses = report["losses"]
    start = statistics.mean(losses[:20])
    for t in range(50, len(losses)):
        if statistics.mean(losses[t - 50:t]) < 0.9 * start:
            return t
    return None


def policies(warmup: int) -> Dict[str, Tuple[FreezePolicy, int]]:
    """name -> (policy, interval merge factor); built fresh for each run."""
    g = lambda **kw: Guards(warmup_steps=warmup, **kw)  # noqa: E731
    out = {f"gradient (paper) x{m}": (GradientNormTest(), m) for m in (1, 2, 4)}
    out["gradient+guards"] = (GuardedGradientTest(guards=g()), 1)
    for t in DRIFT_GRID:
        out[f"stability drift<{t:g}"] = (StabilityPolicy(threshold=t, guards=g()), 1)
    out["stability drift<0.002, no learning guard"] = (StabilityPolicy(threshold=0.002, guards=g(learned=None)), 1)
    for t in DISPLACEMENT_GRID:
        out[f"stability displacement<{t:g}"] = (StabilityPolicy(threshold=t, signal="displacement", guards=g()), 1)
    return out


def replay_run(report: dict) -> Dict[str, dict]:
    n, steps, spe = report["num_blocks"], report["steps"], report["steps_per_epoch"]
    warmup = int(report["config"].get("warmup_ratio", 0.1) * steps)
    learn = learning_start(report)
    res = {}
    for name, (pol, merge) in policies(warmup).items():
        trace = replay(pol, intervals(report, merge), n)
        first = next((s for s, d in trace if d > 0), None)
        active = [n - d for _, d in trace]
        res[name] = {"first_freeze_step": first, "first_freeze_epoch": first / spe if first else None,
                     "before_learning": first is not None and learn is not None and first < learn,
                     "depth_end": trace[-1][1] if trace else 0, "mean_active": statistics.mean(active) if active else n,
                     "speedup_cache": predicted_speedup(trace, steps, spe, n, True),
                     "speedup_nocache": predicted_speedup(trace, steps, spe, n, False), "trace": trace}
    res["_learning_start_step"] = learn
    return res


def ms(xs, fmt="{:.2f}") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "never"
    return (fmt + " ± " + fmt).format(statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def choose_threshold(table: Dict[str, Dict[str, List[dict]]], target: float = 2.0) -> Optional[float]:
    """The rule stated before any policy run: the smallest drift threshold of the grid whose
    predicted speedup with the cache (mean over seeds) is >= target on every task."""
    for t in DRIFT_GRID:
        name = f"stability drift<{t:g}"
        if all(statistics.mean(r["speedup_cache"] for r in per[name]) >= target for per in table.values()):
            return t
    return None


def main(argv=None) -> int:
    from _common import print_table

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "policies"))
    args = ap.parse_args(argv)
    runs = load_full(args.out)
    if not runs:
        print(f"no full runs with recorded signals under {args.out}: run bench_policies.py --policies full first")
        return 1
    table: Dict[str, Dict[str, List[dict]]] = {}
    for (task, seed), r in sorted(runs.items()):
        for name, v in replay_run(r).items():
            if not name.startswith("_"):
                table.setdefault(task, {}).setdefault(name, []).append({**v, "seed": seed})
    rows = []
    for task, per in table.items():
        for name, vs in per.items():
            col = lambda k: [v[k] for v in vs]  # noqa: E731
            rows.append([task, name, len(vs), ms(col("first_freeze_epoch")),
                         f"{sum(col('before_learning'))}/{len(vs)}", ms(col("depth_end"), "{:.1f}"),
                         ms(col("mean_active")), ms(col("speedup_cache")) + "x", ms(col("speedup_nocache")) + "x"])
    print_table(["task", "policy (replayed)", "seeds", "first freeze (epoch)", "before learning", "frozen at end",
                 "mean active blocks", "predicted speedup, cache", "no cache"], rows)
    chosen = choose_threshold(table)
    print(f"rule 'smallest drift threshold predicted >= 2x with the cache on every task': {chosen}")
    path = os.path.join(args.out, "replay.json")
    with open(path, "w") as f:
        json.dump({"table": table, "chosen_threshold": chosen}, f, indent=1)
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
