"""Freezing policies over tasks x seeds against full fine-tuning, resumable across sessions.

Each run is ``autofreeze finetune`` (the CLI's own code path) in a subprocess, with its report
kept under ``OUT/TASK/POLICY/seedS/report.json``; a run whose report exists is never repeated,
and a run that was killed resumes from its checkpoint. Full fine-tuning runs observe every
per-block signal (``--record-signals``) so that policies can be replayed offline on them
(``benchmarks/replay_policies.py``).

    python benchmarks/bench_policies.py --tasks sst2,agnews --policies full,autofreeze+cache \\
        --seeds 0,1,2 --jobs 2          # two runs at a time, one core and one thread each
    python benchmarks/bench_policies.py --summarize        # table, Pareto plot, JSON only

Every run uses ``--threads 1`` pinned to one core (``--jobs`` runs side by side), so all runs of
a sweep see the same conditions whatever else the machine does, and two run at once on 2 cores.
Speedups are per seed against full fine-tuning on the same seed; full's time excludes its
signal recording (the statistics phase), which plain full fine-tuning does not pay.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from autofreeze_ext.cli import mode_slug  # noqa: E402
from _common import best_score, final_score, score  # noqa: E402
from replay_policies import modelled_speedup  # noqa: E402

DATA = os.environ.get("AUTOFREEZE_SHARED_DATA", os.path.join(HERE, "..", "..", "shared", "data"))

#: development tasks: (train file, train rows used, dev file)
TASKS = {
    "sst2": ("sst2/train.tsv", 8000, "sst2/dev.tsv"),
    "agnews": ("agnews/train.tsv", 6000, "agnews/dev.tsv"),
    # held out from the policy choice (checks only): pairs, F1 / regression, Pearson
    "mrpc": ("mrpc/train.tsv", 3668, "mrpc/dev.tsv"),
    "stsb": ("stsb/train.tsv", 5749, "stsb/dev.tsv"),
}

#: policy name -> (mode, extra CLI arguments). New policies are added here.
POLICIES: Dict[str, tuple] = {
    "full": ("full", ["--record-signals"]),
    "autofreeze": ("autofreeze", ["--policy", "gradient"]),
    "autofreeze+cache": ("autofreeze+cache", ["--policy", "gradient"]),  # the paper's test
    "gradient+guards+cache": ("autofreeze+cache", ["--policy", "gradient+guards"]),
    "drift0.02+cache": ("autofreeze+cache", ["--policy", "stability", "--threshold", "0.02"]),
    "drift0.005+cache": ("autofreeze+cache", ["--policy", "stability", "--threshold", "0.005"]),
    "budget2x+cache": ("autofreeze+cache", ["--policy", "budget", "--target-speedup", "2.0"]),
    "drift0.02+anneal+cache": ("autofreeze+cache", ["--policy", "stability", "--threshold", "0.02",
                                                    "--anneal-steps", "25"]),
    "drift0.02+frozen-emb+cache": ("autofreeze+cache", ["--policy", "stability", "--threshold", "0.02",
                                                        "--freeze-word-embeddings"]),
    "frozen-emb": ("full", ["--freeze-word-embeddings"]),
    # budget-matched static schedule: all blocks train until step s, then only the top block, with
    # the same mean number of active blocks as MATCHED's run on the same task and seed
    "matched-static+cache": (None, []),
    # the latest all-at-once freeze that reaches about 2x with the cache on a 3-epoch run (5 of 6
    # blocks frozen after one epoch: 2.7 active blocks on average): can *any* prefix schedule of
    # that cost keep accuracy?
    "static5@1ep+cache": (lambda task: f"static:5@{steps_per_epoch(task)}+cache", []),
    # the matched static schedule as a setting chosen in advance: 5 of 6 blocks at 80% of the run
    # (0.8: the mean of the six matched freeze steps of sweep 3, 0.65-0.93 of the run), behind the
    # learning guard
    "late+cache": ("autofreeze+cache", ["--policy", "late", "--freeze-at", "0.8"]),
    # issue 27: freeze once the validation slice (5% of the training rows, held out in every run of a
    # regime) stops improving; with the built-in early stop; or at 0.8 of the run at the latest
    "plateau+cache": ("autofreeze+cache", ["--policy", "plateau"]),
    "plateau+stop+cache": ("autofreeze+cache", ["--policy", "plateau", "--stop-when-converged"]),
    "plateau-or-late+cache": ("autofreeze+cache", ["--policy", "plateau-or-late"]),
    # half the checks' cost: one check an epoch, a plateau after one check without a gain (one epoch)
    "plateau-1x1+cache": ("autofreeze+cache", ["--policy", "plateau", "--val-checks-per-epoch", "1",
                                               "--plateau-patience", "1"]),
}
#: run lengths (issue 27): epochs, and what every run of the regime adds. Full fine-tuning there
#: records the validation slice at 10 checks per epoch (the plateau policy's 2 per epoch among
#: them) for the early-stopping readout; every run holds out the same slice, so all train on the
#: same rows.
REGIMES = {
    "short": {"epochs": 3},  # full fine-tuning still improving at the end
    "overlong": {"epochs": 10},  # the paper's regime: full fine-tuning peaks well before the end
    # fresh data: the whole training set (SST-2: 67,349 rows less the 2,000-row slice, 2,043 steps an epoch),
    # still learning at the end; estimated 8-10 minutes of training per epoch on one core here
    # (0.22-0.30 s a step: BENCHMARKS' quiet timing and over-long SST-2 seeds 3-4), plus its slice
    # recordings and evaluations
    "fresh": {"epochs": 2, "all_rows": True},
}
REGIME_ARGS = ["--val-fraction", "0.05"]
REGIME_FULL_ARGS = ["--intervals-per-epoch", "10"]
MATCHED = "gradient+guards+cache"  # the most accurate adaptive policy of sweep 2


def matched_mode(out: str, task: str, seed: int) -> Optional[str]:
    """``static:(n-1)@s+cache`` with the mean active blocks of MATCHED's run, or None before it ran."""
    path = report_path(run_dir(out, task, MATCHED, seed))
    if not os.path.exists(path):
        return None
    r = json.load(open(path))
    n, total, trace = r["num_blocks"], r["steps"], r["frozen_depth"]
    active = sum((n - a["depth"]) * (b["step"] - a["step"]) for a, b in zip(trace, trace[1:])) / total
    s = round(total * (active - 1) / (n - 1))
    return f"static:{n - 1}@{max(1, min(total, s))}+cache"


def steps_per_epoch(task: str, batch_size: int = 32) -> int:
    return -(-TASKS[task][1] // batch_size)


def mode_of(out: str, task: str, policy: str, seed: int) -> Optional[str]:
    """The ``--mode`` of a run; None for a matched schedule whose reference has not run yet."""
    mode = POLICIES[policy][0]
    if mode is None:
        return matched_mode(out, task, seed)
    return mode(task) if callable(mode) else mode


def run_dir(out: str, task: str, policy: str, seed: int) -> str:
    return os.path.join(out, task, policy.replace(":", "-").replace("+", "_"), f"seed{seed}")


def command(task: str, policy: str, seed: int, d: str, args) -> List[str]:
    train, n, dev = TASKS[task]
    mode, extra = mode_of(args.out, task, policy, seed), POLICIES[policy][1]
    ck = os.path.join(d, "ck")
    rows = [] if args.regime and REGIMES[args.regime].get("all_rows") else ["--train-samples", str(n)]
    cmd = [sys.executable, "-m", "autofreeze_ext.cli", "finetune", "--mode", mode,
           "--train", os.path.join(DATA, train), "--dev", os.path.join(DATA, dev), *rows,
           "--seed", str(seed), "--epochs", str(args.epochs), "--threads", "1", "--no-progress", "--no-plot",
           "--out", d, "--checkpoint-dir", ck, "--checkpoint-every", "100", *extra]
    if args.regime:
        cmd += REGIME_ARGS + (REGIME_FULL_ARGS if policy == "full" else [])
    if os.path.exists(os.path.join(ck, "checkpoint.pt")):
        cmd.append("--resume")
    return cmd


def report_path(d: str) -> str:
    return os.path.join(d, "report.json")


def launch(task, policy, seed, core, args) -> subprocess.Popen:
    d = run_dir(args.out, task, policy, seed)
    os.makedirs(d, exist_ok=True)
    log = open(os.path.join(d, "log.txt"), "a")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pre = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    return subprocess.Popen(command(task, policy, seed, d, args), stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=pre, cwd=d)


def finish(task, policy, seed, proc, args) -> None:
    d = run_dir(args.out, task, policy, seed)
    mode = mode_of(args.out, task, policy, seed)
    produced = os.path.join(d, f"finetune_{mode_slug(mode)}.json")
    if proc.returncode != 0 or not os.path.exists(produced):
        print(f"  {task}/{policy}/seed{seed}: failed (exit {proc.returncode}); see {d}/log.txt", flush=True)
        return
    os.replace(produced, report_path(d))
    shutil.rmtree(os.path.join(d, "ck"), ignore_errors=True)
    r = json.load(open(report_path(d)))
    print(f"  {task}/{policy}/seed{seed}: done, {r['train_time_s']:.0f} s, best {r.get('metric', 'accuracy')} "
          f"{100 * best_score(r):.2f}",
          flush=True)


def sweep(args) -> None:
    todo = [(t, p, s) for s in args.seeds for t in args.tasks for p in args.policies
            if not os.path.exists(report_path(run_dir(args.out, t, p, s)))]
    print(f"{len(todo)} run(s) to do", flush=True)
    cores = args.cores or list(sorted(os.sched_getaffinity(0)))
    running: Dict[int, tuple] = {}
    t_end = time.time() + args.max_hours * 3600 if args.max_hours else math.inf
    while todo or running:
        while todo and len(running) < args.jobs and time.time() < t_end:
            ready = [k for k, (t, p, s) in enumerate(todo)
                     if mode_of(args.out, t, p, s) is not None]
            if not ready:  # only matched schedules whose reference run has not finished yet
                break
            core = next(c for c in cores if c not in running) if args.jobs <= len(cores) else None
            t, p, s = todo.pop(ready[0])
            print(f"  start {t}/{p}/seed{s} on core {core}", flush=True)
            running[core] = (t, p, s, launch(t, p, s, core, args))
        if not running:
            if todo:
                print(f"  {len(todo)} matched run(s) wait for {MATCHED} runs that are not in this sweep", flush=True)
            break
        time.sleep(5)
        for core, (t, p, s, proc) in list(running.items()):
            if proc.poll() is not None:
                finish(t, p, s, proc, args)
                del running[core]


def load(out: str) -> Dict[tuple, dict]:
    runs = {}
    for task in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        for pol in POLICIES:
            for seed in range(100):
                path = report_path(run_dir(out, task, pol, seed))
                if os.path.exists(path):
                    runs[(task, pol, seed)] = json.load(open(path))
    return runs


def full_time(r: dict) -> float:
    """Full fine-tuning's time without its signal recording."""
    return r["train_time_s"] - r["phases_s"].get("statistics", 0.0)


def statistics_share(r: dict) -> float:
    """The statistics phase's share of training time: a policy's signals and decisions (a full
    run's: its signal recording). A resume carries the phase on, where a report's signal_seconds
    restarted at each resume until the controller kept them."""
    return r["phases_s"].get("statistics", 0.0) / r["train_time_s"]


def busy(r: dict) -> bool:
    """The machine had more runnable work than cores when the run ended (5-minute load average
    above the cores + 1): its time is not comparable, only its accuracy (reports from before
    the load was recorded count as quiet)."""
    load = r.get("load_average")
    return bool(load) and load[1] > (os.cpu_count() or 1) + 1


def per_seed(r: dict, full: dict) -> dict:
    ev = r["evals"]
    hit = next((e for e in ev if score(e) >= final_score(full)), None)
    first = next((h for h in r["controller_history"] if h["event"] == "freeze"), None)
    spent = r["train_time_s"] if r["mode"] != "full" else full_time(r)
    modelled = modelled_speedup(r, full)  # against full's fixed budget: a run that stopped early gains by it
    return {"speedup": None if busy(r) or busy(full) else full_time(full) / spent,
            # the replay's cost model (calibrated on a quiet same-run compare) on this run's own
            # freezing schedule: a speed figure that does not depend on what else the machine ran
            "modelled_speedup": modelled,
            "d_best": 100 * (best_score(r) - best_score(full)),  # points of the task's metric
            "d_final": 100 * (final_score(r) - final_score(full)),
            "to_full_final": hit["train_time_s"] / full_time(full) if hit else None,
            "depth_end": r["frozen_depth"][-1]["depth"],
            "first_freeze_epoch": first["epoch"] if first else None,
            "signal_share": statistics_share(r)}


def ms(xs: List[Optional[float]], fmt: str = "{:.2f}") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "never"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return (fmt + " ± " + fmt).format(statistics.mean(xs), sd)


def timing_excluded(out: str) -> set:
    """``OUT/timing_excluded.txt``: runs (``task/policy/seedS``, one per line, ``#`` comments)
    whose times were taken while other work shared the machine; their accuracy still counts."""
    path = os.path.join(out, "timing_excluded.txt")
    if not os.path.exists(path):
        return set()
    return {line.split("#")[0].strip() for line in open(path) if line.split("#")[0].strip()}


def summarize(out: str) -> dict:
    from _common import print_table

    runs = load(out)
    excluded = timing_excluded(out)
    rows, table = [], {}
    for task in sorted({k[0] for k in runs}):
        for pol in POLICIES:
            seeds = sorted(s for (t, p, s) in runs if t == task and p == pol and (t, "full", s) in runs)
            if not seeds:
                continue
            ps = [per_seed(runs[(task, pol, s)], runs[(task, "full", s)]) for s in seeds]
            for s, p in zip(seeds, ps):  # timings listed as taken on a busy machine: accuracy only
                if f"{task}/{pol}/seed{s}" in excluded or f"{task}/full/seed{s}" in excluded:
                    p["speedup"] = None
            table[f"{task}/{pol}"] = {"seeds": seeds, "runs": ps}
            col = lambda k: [p[k] for p in ps]  # noqa: E731
            speed = ms(col("speedup"))
            rows.append([task, pol, len(seeds), speed + "x" if speed != "never" else "n/a (busy machine)",
                         ms(col("modelled_speedup")) + "x", ms(col("d_best")), ms(col("d_final")),
                         ms(col("to_full_final")), ms(col("depth_end"), "{:.1f}"),
                         ms(col("first_freeze_epoch")), f"{100 * max(col('signal_share')):.2f}%"])
    print_table(["task", "policy", "seeds", "speedup (measured)", "modelled speedup", "Δ best", "Δ final", "time to full's final (x full)",
                 "frozen at end", "first freeze (epoch)", "signal overhead (max)"], rows)
    return table


def pareto_plot(table: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autofreeze_ext.plots import save_figure

    tasks = sorted({k.split("/")[0] for k in table})
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(6 * max(1, len(tasks)), 4.5), squeeze=False)
    markers = "osD^v<>Px*"
    pols = list(POLICIES)
    for ax, task in zip(axes[0], tasks):
        for key, v in table.items():
            t, pol = key.split("/", 1)
            if t != task:
                continue
            m, c = markers[pols.index(pol) % len(markers)], plt.cm.tab20(pols.index(pol) % 20)
            measured = [p for p in v["runs"] if p["speedup"] is not None]
            modelled = [p for p in v["runs"] if p["speedup"] is None and p.get("modelled_speedup")]
            ax.scatter([p["speedup"] for p in measured], [p["d_best"] for p in measured], marker=m, color=c,
                       label=pol if measured else None)
            # a busy machine's run: its speed is the cost model's (hollow marker, same colour)
            ax.scatter([p["modelled_speedup"] for p in modelled], [p["d_best"] for p in modelled], marker=m,
                       facecolors="none", edgecolors=c, label=None if measured else f"{pol} (modelled)")
        ax.axhline(-0.5, ls="--", c="grey", lw=0.8)
        ax.axvline(2.0, ls="--", c="grey", lw=0.8)
        ax.set_xlabel("speedup vs full (same seed); hollow: modelled (busy machine)")
        ax.set_ylabel("Δ best dev metric (points)")
        ax.set_title(task)
    print(f"plot: {save_figure(fig, axes[0], path, dpi=120)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="sst2,agnews")
    ap.add_argument("--policies", default="full,autofreeze+cache")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side, one core each")
    ap.add_argument("--cores", type=lambda v: [int(c) for c in v.split(",")], default=None,
                    help="cores to pin runs to, e.g. 1 (default: all this process may use); lets two sweeps share "
                         "a machine")
    ap.add_argument("--max-hours", type=float, default=None, help="start no new run after this long")
    ap.add_argument("--out", default=None,
                    help="results folder (default: results/policies, or results/regimes with --regime)")
    ap.add_argument("--summarize", action="store_true", help="only summarize the reports on disk")
    ap.add_argument("--regime", choices=sorted(REGIMES), default=None,
                    help="issue 27's run lengths: sets --epochs, holds out a 5%% validation slice in every run, "
                         "and writes under OUT/REGIME (default: the earlier sweeps' setting, no slice)")
    args = ap.parse_args(argv)
    base = os.path.join(HERE, "results", "regimes" if args.regime else "policies")
    args.out = args.out or base
    if args.regime:
        args.epochs = REGIMES[args.regime]["epochs"]
        args.out = os.path.join(args.out, args.regime)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.policies = [p for p in args.policies.split(",") if p]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.out = os.path.abspath(args.out)  # each run's process works in its own run folder
    for t in args.tasks:
        if t not in TASKS:
            ap.error(f"unknown task {t!r}; known: {', '.join(TASKS)}")
    for p in args.policies:
        if p not in POLICIES:
            ap.error(f"unknown policy {p!r}; known: {', '.join(POLICIES)}")
    if args.regime and REGIMES[args.regime].get("all_rows"):
        sized = [p for p in args.policies if p in ("static5@1ep+cache", "matched-static+cache")]
        if sized:
            ap.error(f"{', '.join(sized)}: their schedules are sized for the sweeps' row counts, not the whole "
                     f"training set of --regime {args.regime}")
    if not args.summarize:
        if "full" not in args.policies:
            print("note: speedups need full fine-tuning on the same seeds (add 'full')")
        sweep(args)
    table = summarize(args.out)
    if table:
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(table, f, indent=1)
        pareto_plot(table, os.path.join(args.out, "pareto.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
