"""Time to accuracy and the early-stopping baseline, read off the reports of a regime sweep.

``bench_policies.py --regime short|overlong`` runs every policy with the same held-out
validation slice; full fine-tuning records the slice at 10 checks per epoch. From those reports:

* **target**: full fine-tuning's best dev score on the same seed - 0.5 points;
* **time to target**: the training cost up to the first dev evaluation at or above it (None:
  never), for every run, full fine-tuning included (= early stopping with a perfect oracle), in
  the replay's cost model as a share of full's fixed budget (the JSON also has each run's
  measured fixed-budget speedup, ``fixed_budget_speedup``, where the machine was quiet);
* **Δ final**: the dev score where the run ended against full fine-tuning's at its end;
* **early stopping** (read off the full run, no training of its own): the plateau policy's rule
  (no better slice score and no lower slice loss for ``patience`` checks at 2 per epoch) as a
  stop; its time is full's time at that step, its dev score that of the last dev evaluation at
  or before the stop (evaluations are 5 per epoch, so at most 0.1 epoch earlier), and
  ``restoring the slice's best`` the dev score at the check with the best slice score (as
  ``load_best_model_at_end``), both against full's final score.

Full fine-tuning's times exclude its signal recording (the statistics phase), scaled evenly over
the run.

    python benchmarks/time_to_accuracy.py [--out benchmarks/results/regimes]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_policies import busy, full_time, statistics_share  # noqa: E402  (one definition of each)
from replay_policies import modelled_share, modelled_speedup  # noqa: E402
from autofreeze_ext.policies import Guards, IntervalStats, PlateauFreeze, tiled_interval_ends  # noqa: E402

MARGIN = 0.005  # 0.5 points below full fine-tuning's best
T95 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571}  # Student t, two-sided 95%, by sample size


def own_time(r: dict) -> float:
    """Training time without signal recording (full fine-tuning's statistics phase)."""
    return full_time(r) if r["mode"] == "full" else r["train_time_s"]


def time_at(r: dict, step: int) -> float:
    """Training time after ``step`` steps (linear between dev evaluations), recording excluded."""
    pts = [(0, 0.0)] + [(e["step"], e["train_time_s"]) for e in r["evals"]]
    scale = own_time(r) / r["train_time_s"] if r["train_time_s"] else 1.0
    for (s0, t0), (s1, t1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return scale * (t0 + (t1 - t0) * (step - s0) / max(1, s1 - s0))
    return own_time(r)


def slice_checks(full: dict, per_epoch: int = 2) -> List[dict]:
    """The full run's recorded slice values at the plateau policy's check points."""
    spe = full["steps_per_epoch"]
    ends = tiled_interval_ends(spe, per_epoch)
    return [h for h in full["controller_history"] if h.get("event") == "interval"
            and ((h["step"] - 1) % spe + 1) in ends and isinstance(h.get("signals", {}).get("val_slice"), dict)]


def early_stop(full: dict, patience: int = 2, per_epoch: int = 2) -> Optional[dict]:
    """Where the plateau rule (``patience`` checks without a gain, ``per_epoch`` checks per epoch)
    would have stopped full fine-tuning (None: it never plateaus)."""
    rule = PlateauFreeze(patience=patience, guards=Guards(learned=None, keep_last=0))
    checks, best = slice_checks(full, per_epoch), None
    for h in checks:
        v = h["signals"]["val_slice"]
        if best is None or v["score"] > best[1]:
            best = (h["step"], v["score"])
        stats = IntervalStats(step=h["step"], epoch=math.nan, frozen_depth=0, num_blocks=1, max_depth=1,
                              interval_steps=1, signals={"val_slice": v})
        if rule.decide(stats) > 0:
            at = [e for e in full["evals"] if e["step"] <= h["step"]]
            at_best = [e for e in full["evals"] if e["step"] <= best[0]]
            # no dev evaluation at or before a step: its dev score was never measured (None)
            return {"step": h["step"], "epoch": h["epoch"], "time": time_at(full, h["step"]),
                    "score": at[-1]["score"] if at else None,
                    "restore_best_score": at_best[-1]["score"] if at_best else None}
    return None


def ci95(xs: List[float]) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return "n/a"
    m = statistics.mean(xs)
    if len(xs) < 2:
        return f"{m:.2f}"
    sd = statistics.stdev(xs)
    h = T95.get(len(xs), 2.0) * sd / math.sqrt(len(xs))
    return f"{m:.2f} ± {sd:.2f} [{m - h:.2f}, {m + h:.2f}]"


def step_to(r: dict, target: float, until: Optional[int] = None) -> Optional[int]:
    """The step of the first dev evaluation scoring >= ``target`` (at or before ``until``)."""
    for e in r["evals"]:
        if until is not None and e["step"] > until:
            break
        if e["score"] >= target - 1e-12:
            return e["step"]
    return None


def per_run(r: dict, full: dict) -> Dict[str, Optional[float]]:
    """One run against full fine-tuning of the same seed."""
    target = max(e["score"] for e in full["evals"]) - MARGIN
    hit = step_to(r, target)
    quiet = not busy(r) and not busy(full)
    overhead = statistics_share(r) if r["mode"] != "full" else 0.0
    return {"fixed_budget_speedup": own_time(full) / own_time(r) if quiet else None,
            "modelled_speedup": modelled_speedup(r, full), "policy_overhead": overhead, "d_best": 100 * (max(e["score"] for e in r["evals"])
            - max(e["score"] for e in full["evals"])), "d_final": 100 * (r["evals"][-1]["score"]
            - full["evals"][-1]["score"]), "step_to_target": hit,
            "time_to_target_x_full_budget": None if hit is None else modelled_share(r, full, hit),
            "end_time_x_full_budget": modelled_share(r, full)}


def points(score: Optional[float], against: float) -> Optional[float]:
    """``score - against`` in points (None: a stop before any dev evaluation, never scored)."""
    return None if score is None else 100 * (score - against)


def es_run(full: dict, patience: int = 2) -> Dict[str, Optional[float]]:
    """Early stopping read off a full run; one that never plateaus runs to the end (``stop_epoch`` None)."""
    es = early_stop(full, patience)
    best = max(e["score"] for e in full["evals"])
    if es is None:
        slice_best = max(slice_checks(full), key=lambda h: h["signals"]["val_slice"]["score"], default=None)
        at_best = [e for e in full["evals"] if slice_best and e["step"] <= slice_best["step"]]
        es = {"step": full["steps"], "epoch": None, "time": own_time(full), "score": full["evals"][-1]["score"],
              "restore_best_score": at_best[-1]["score"] if at_best else full["evals"][-1]["score"]}
    hit = step_to(full, best - MARGIN, until=es["step"])
    final = full["evals"][-1]["score"]
    return {"fixed_budget_speedup": own_time(full) / es["time"] if not busy(full) else None,
            "modelled_speedup": full["steps"] / es["step"], "policy_overhead": 0.0, "d_best": None,
            "d_final": points(es["score"], final), "d_restore_best": points(es["restore_best_score"], final),
            "stop_epoch": es["epoch"], "step_to_target": hit,
            "time_to_target_x_full_budget": None if hit is None else hit / full["steps"],
            "end_time_x_full_budget": es["step"] / full["steps"]}


def load_regime(out: str) -> Dict[str, Dict[str, Dict[int, dict]]]:
    """task -> policy folder -> seed -> report."""
    runs: Dict[str, Dict[str, Dict[int, dict]]] = {}
    for task in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        for pol in sorted(os.listdir(os.path.join(out, task))) if os.path.isdir(os.path.join(out, task)) else []:
            for sd in sorted(os.listdir(os.path.join(out, task, pol))):
                path = os.path.join(out, task, pol, sd, "report.json")
                if sd.startswith("seed") and os.path.exists(path):
                    runs.setdefault(task, {}).setdefault(pol, {})[int(sd[4:])] = json.load(open(path))
    return runs


def summarize(out: str) -> dict:
    from _common import print_table

    table, rows = {}, []
    keys = ["fixed_budget_speedup", "modelled_speedup", "d_best", "d_final", "d_restore_best",
            "time_to_target_x_full_budget", "end_time_x_full_budget", "policy_overhead"]
    for task, pols in load_regime(out).items():
        fulls = pols.get("full", {})
        variants = {"early-stop (full, read off)": {s: es_run(f) for s, f in fulls.items()}}
        variants.update({p: {s: per_run(r, fulls[s]) for s, r in runs.items() if s in fulls}
                         for p, runs in pols.items()})
        for name, res in variants.items():
            seeds = sorted(s for s, v in res.items() if v is not None)
            never = sorted(s for s, v in res.items() if v is None)
            if not seeds:
                continue
            table[f"{task}/{name}"] = {"seeds": seeds, "never": never, "runs": [res[s] for s in seeds]}
            cols = [ci95([res[s].get(k) for s in seeds]) for k in keys]
            missed = sum(res[s]["step_to_target"] is None for s in seeds)
            rows.append([task, name, len(seeds), *cols, missed])
    print_table(["task", "run", "seeds", "speedup (measured)", "speedup (modelled)", "Δ best", "Δ final (at its end)",
                 "Δ restoring the slice's best", "time to full's best-0.5 (x full, modelled)", "ends at (x full, modelled)",
                 "policy overhead", "never reached"], rows)
    return table


def plot_curves(out: str, path: str) -> Optional[str]:
    """Dev score against training cost (the cost model, x full fine-tuning's budget), every seed;
    early stops marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autofreeze_ext.plots import save_figure

    runs = load_regime(out)
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.5), squeeze=False)
    for ax, (task, pols) in zip(axes[0], runs.items()):
        for k, (pol, seeds) in enumerate(sorted(pols.items())):
            for s, r in sorted(seeds.items()):
                full = pols.get("full", {}).get(s)
                if full is None:
                    continue
                xs = [modelled_share(r, full, e["step"]) for e in r["evals"]]
                ax.plot(xs, [100 * e["score"] for e in r["evals"]], color=plt.cm.tab10(k), lw=1,
                        label=pol if s == min(seeds) else None)
                es = early_stop(r) if pol == "full" else None
                if es:
                    ax.plot([es["step"] / full["steps"]], [100 * es["score"]], "kx", ms=8,
                            label="early stop (read off full)" if s == min(seeds) else None)
        ax.set_xlabel("training cost (x full fine-tuning's fixed budget, same seed; the cost model)")
        top = max(100 * e["score"] for seeds in pols.values() for r in seeds.values() for e in r["evals"])
        ax.set_ylim(top - 8, top + 1)  # the first epoch's rise is cut: the plateau is what matters here
        ax.set_ylabel("dev score (%)")
        ax.set_title(f"{task}: {os.path.basename(os.path.abspath(out))}")
    return save_figure(fig, axes[0], path)


RUN_NAMES = {"full": "full fine-tuning (fixed budget)",
             "early-stop (full, read off)": "early stopping (read off full, same slice and patience)",
             "plateau_cache": "`plateau` + cache", "plateau_stop_cache": "`plateau --stop-when-converged` + cache",
             "plateau-1x1_cache": "`plateau --val-checks-per-epoch 1 --plateau-patience 1` + cache"}


def markdown(out: str) -> str:
    """BENCHMARKS.md's table over every regime's ``time_to_accuracy.json`` under ``out``."""
    lines = ["| regime | run | seeds | speedup (modelled) | Δ best | Δ final (at its end) | time to full's best − 0.5 "
             "(x budget) | ends at (x budget) | overhead | never reached |", "|" + " --- |" * 10]
    for regime in sorted(os.listdir(out), reverse=True):  # short, then overlong
        path = os.path.join(out, regime, "time_to_accuracy.json")
        if not os.path.exists(path):
            continue
        for key, v in json.load(open(path)).items():
            task, run = key.split("/", 1)
            rs = v["runs"]

            def col(k):
                return [r.get(k) for r in rs]

            final = ci95(col("d_final"))
            if run.startswith("early"):
                final += f" (restoring the slice's best: {ci95(col('d_restore_best'))})"
            lines.append(f"| {regime} ({task}) | {RUN_NAMES.get(run, run)} | {','.join(map(str, v['seeds']))} | "
                         f"{ci95(col('modelled_speedup'))}x | {ci95(col('d_best'))} | {final} | "
                         f"{ci95(col('time_to_target_x_full_budget'))} | {ci95(col('end_time_x_full_budget'))} | "
                         f"{100 * statistics.mean(col('policy_overhead')):.1f}% | "
                         f"{sum(r['step_to_target'] is None for r in rs)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "regimes"))
    args = ap.parse_args(argv)
    for regime in sorted(os.listdir(args.out)):
        d = os.path.join(args.out, regime)
        if not os.path.isdir(d):
            continue
        print(f"\n== {regime} ==")
        table = summarize(d)
        with open(os.path.join(d, "time_to_accuracy.json"), "w") as f:
            json.dump(table, f, indent=1)
        print("plot:", plot_curves(d, os.path.join(d, "curves.png")))
    print("\n" + markdown(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
