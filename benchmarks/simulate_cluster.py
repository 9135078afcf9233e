"""Project a data-parallel AutoFreeze job onto many workers with the planner's throughput model.

Inputs, all measured on this machine and named on the command line:
* a single-process ``autofreeze compare`` report (per-depth seconds per sample, from the
  training time between evaluations; the freezing schedule of the autofreeze mode);
* an all-reduce fit from ``benchmarks/bench_allreduce.py`` (alpha, beta);
* gradient bytes per step at each depth, counted from the model's active parameters (what the
  DDP communication hook measures: tests/test_distributed.py checks they are equal).

    python benchmarks/simulate_cluster.py --report benchmarks/results/sst2_seed0/compare.json \\
        --allreduce benchmarks/results/allreduce_w2.json --workers 64

Assumptions (printed with the result): workers as fast as this one; the all-reduce of W workers
follows the ring model with the fitted alpha/beta; no overlap of communication with backward;
the freezing schedule (fraction of steps at each depth) does not depend on W (same global
batch); a restart costs ``--restart-s``. ``--compute-scale`` divides per-sample compute (e.g.
50 for a GPU-class worker) to show how the figures move when communication weighs more.
"""
import argparse
import json

from autofreeze_ext._table import print_table
from autofreeze_ext.planning.planner import (ThroughputModel, compute_from_report, plan, plan_live,
                                             schedule_from_report)


def active_bytes_per_depth(num_blocks: int, model_path=None):
    from autofreeze_ext.freezing.adapters import resolve_layout
    from autofreeze_ext.training import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(model_path, 2)
    layout = resolve_layout(model)
    total = sum(p.numel() for p in model.parameters())
    out = {}
    frozen = sum(p.numel() for m in layout.embeddings for p in m.parameters())
    out[0] = 4 * total
    for d in range(1, num_blocks + 1):
        frozen_d = frozen + sum(p.numel() for b in layout.blocks[:d] for p in b.parameters())
        out[d] = 4 * (total - frozen_d)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", required=True)
    ap.add_argument("--allreduce", required=True)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--mode", default="autofreeze+cache", help="the mode whose schedule is projected")
    ap.add_argument("--restart-s", type=float, default=60.0)
    ap.add_argument("--compute-scale", type=float, default=1.0)
    ap.add_argument("--per-worker-batch", type=int, default=None,
                    help="samples per worker per step (default: the run's batch; global batch = workers x this)")
    ap.add_argument("--data-scale", type=float, default=1.0,
                    help="multiply the run's samples (e.g. 67349/8000 for the whole SST-2 training set)")
    ap.add_argument("--alpha-us", type=float, default=None, help="override the fitted all-reduce latency")
    ap.add_argument("--beta-ns", type=float, default=None, help="override the fitted ns per byte")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs = {r["mode"]: r for r in json.load(open(args.report))["runs"]}
    full, run = runs["full"], runs[args.mode]
    ar = json.load(open(args.allreduce))
    nbytes = active_bytes_per_depth(run["num_blocks"])
    comp = {d: v / args.compute_scale for d, v in compute_from_report(run).items()}
    comp_full = {0: compute_from_report(full)[0] / args.compute_scale}
    if args.alpha_us is not None:
        ar["alpha"] = args.alpha_us * 1e-6
    if args.beta_ns is not None:
        ar["beta"] = args.beta_ns * 1e-9
    samples = run["steps"] * run["config"]["batch_size"] * args.data_scale
    batch = args.workers * (args.per_worker_batch or run["config"]["batch_size"])
    steps = max(1, round(samples / batch))
    m_full = ThroughputModel(comp_full, nbytes, ar["alpha"], ar["beta"], args.restart_s)
    m_af = ThroughputModel(comp, nbytes, ar["alpha"], ar["beta"], args.restart_s)
    sched = schedule_from_report(run)
    rows, out = [], {}
    base = plan(m_full, [(0, 1.0)], steps, batch, args.workers, "time")
    for name, p in [("full", base), (f"{args.mode}, time", plan(m_af, sched, steps, batch, args.workers, "time")),
                    (f"{args.mode}, cost (best in hindsight)", plan(m_af, sched, steps, batch, args.workers, "cost",
                                                                   deadline_s=base.time_s)),
                    (f"{args.mode}, cost (live chooser)", plan_live(m_af, sched, steps, batch, args.workers,
                                                                    deadline_s=base.time_s))]:
        rows.append([name, " ".join(map(str, p.workers)), f"{p.time_s:.1f}", f"{base.time_s / p.time_s:.2f}x",
                     f"{p.worker_s:.0f}", f"{base.worker_s / p.worker_s:.2f}x"])
        out[name] = {"workers": p.workers, "time_s": p.time_s, "worker_s": p.worker_s}
    print(f"projection to {args.workers} workers (global batch {batch}, {steps} steps; schedule "
          f"{[(d, round(f, 3)) for d, f in sched]}; per-sample compute ms "
          f"{ {d: round(1e3 * v, 2) for d, v in sorted(comp.items())} }; all-reduce alpha "
          f"{ar['alpha'] * 1e6:.0f} us, beta {ar['beta'] * 1e9:.3f} ns/B; restart {args.restart_s:.0f} s; "
          f"compute scale 1/{args.compute_scale:g}):")
    print_table(["plan", "workers per phase", "time s", "speedup", "worker-s", "cost reduction"], rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "schedule": sched, "compute_s": comp, "bytes": nbytes, "plans": out}, f,
                      indent=1)


if __name__ == "__main__":
    main()
