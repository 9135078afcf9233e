"""All-reduce time vs message size on this machine's torch.distributed backend, and the ring
model's fit (alpha: seconds per round, beta: seconds per byte) that the planner uses.

    torchrun --standalone --nproc_per_node 2 benchmarks/bench_allreduce.py --json out.json

Baseline in the same run: ``dist.all_reduce`` itself is the measured quantity; the fit is
reported next to the measurements so its error is visible.
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-kib", default="4,64,512,4096,16384,65536")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from autofreeze_ext.parallel import init_from_env
    from autofreeze_ext.planning.planner import fit_allreduce

    ctx = init_from_env("cuda" if os.environ.get("AUTOFREEZE_BENCH_CUDA") else "cpu")
    w = ctx.world_size
    rows = []
    for kib in (int(x) for x in args.sizes_kib.split(",")):
        t = torch.ones(kib * 256, dtype=torch.float32, device=ctx.device)
        for _ in range(2):
            dist.all_reduce(t)
        dist.barrier()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            dist.all_reduce(t)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        slowest = torch.tensor([sorted(times)[len(times) // 2]], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # the step waits for the slowest rank
        rows.append((w, kib * 1024, slowest.item()))
    alpha, beta = fit_allreduce(rows)
    if ctx.is_main:
        from autofreeze_ext._table import print_table
        from autofreeze_ext.planning.planner import ThroughputModel

        m = ThroughputModel({}, {}, alpha, beta)
        print(f"all-reduce, {w} ranks, backend {ctx.backend}, median of {args.reps}:")
        print_table(["size", "measured ms", "ring model ms", "GB/s (bus)"],
                    [[f"{b // 1024} KiB", f"{1e3 * s:.3f}", f"{1e3 * m.allreduce_s(w, b):.3f}",
                      f"{b * 2 * (w - 1) / w / s / 1e9:.2f}"] for _, b, s in rows])
        print(f"fit: alpha {alpha * 1e6:.1f} us per round, beta {beta * 1e9:.3f} ns per byte "
              f"({1 / beta / 1e9 if beta else float('inf'):.2f} GB/s)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"world_size": w, "backend": ctx.backend, "samples": rows, "alpha": alpha, "beta": beta}, f,
                          indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
