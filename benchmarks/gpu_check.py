"""One-shot GPU validation: everything the CUDA paths claim, measured unattended in minutes.

Run it on a machine with an NVIDIA GPU, CUDA torch and nvcc (no network needed), from the
repository root:

    python benchmarks/gpu_check.py [--out DIR] [--budget-s 480] [--steps build,pytest,...]

Steps, each with its share of the time budget (the script stops itself within ``--budget-s``):

* ``build``: ``pip install --no-deps --no-build-isolation -e .`` (the CUDA kernels compile where
  nvcc is found; liburing may be absent: the I/O engine then falls back, and the summary says
  which engine loaded). Needs pybind11, cmake and ninja installed beside torch.
* ``pytest``: ``pytest -m gpu tests``.
* ``grad_stats``: ``bench_grad_stats.py --device cuda`` and, in the same run, a device-to-device
  copy: ours against ``torch._foreach_*`` (target >= 1.3x) and ours' bytes/s against the
  copy's (target >= 85%).
* ``h2d``: pinned and pageable host-to-device throughput, and how much of the activation
  cache's pinned prefetch copy hides behind compute.
* ``nccl``: ``autofreeze finetune --device cuda`` under ``torchrun --nproc_per_node 1`` (NCCL).
* ``compare``: ``autofreeze compare --device cuda --amp bf16 --modes full,autofreeze+cache`` on
  the packaged MiniLM and the built-in SST-2 sample.

Every step writes its result to ``OUT/<step>.json``; ``OUT/summary.json`` and
``OUT/summary.md`` hold them all (``OUT``: ``--out``, else ``$OUT``, else ``gpu_check_out``).
Without a CUDA device every step is recorded as skipped and the exit status is 0.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["build", "pytest", "grad_stats", "h2d", "nccl", "compare"]
#: share of the time budget each step may use at most (what is left over carries forward)
SHARE = {"build": 0.30, "pytest": 0.15, "grad_stats": 0.15, "h2d": 0.10, "nccl": 0.10, "compare": 0.20}


def sh(cmd: List[str], timeout: float, log: str) -> dict:
    """Run ``cmd`` in the repository root; its output goes to ``log``; rc 124 on timeout."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=max(1.0, timeout)).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    tail = open(log, errors="replace").read()[-1500:]
    return {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "log": log, "tail": tail}


def step_build(out: str, budget: float) -> dict:
    r = sh([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-v", "-e", "."], budget,
           os.path.join(out, "build.log"))
    info = sh([sys.executable, "-c", "import json, autofreeze_ext as a; print(json.dumps(a.backend_info()))"], 60,
              os.path.join(out, "backend_info.log"))
    try:
        b = json.loads(info["tail"].strip().splitlines()[-1])
        r.update(compiled=b["compiled"], compiled_with_cuda=b["compiled_with_cuda"],
                 grad_stats_cuda=b["grad_stats"]["cuda"], cache_io=b["cache_io"]["engine"], missing=b["missing"])
    except (ValueError, IndexError, KeyError):
        r["backend_info"] = "could not be read (see backend_info.log)"
    r["status"] = "ok" if r["rc"] == 0 and r.get("compiled_with_cuda") else "failed"
    return r


def step_pytest(out: str, budget: float) -> dict:
    r = sh([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], budget, os.path.join(out, "pytest.log"))
    r["result_line"] = next((ln for ln in reversed(r["tail"].splitlines()) if " passed" in ln or " failed" in ln), "")
    r["status"] = "ok" if r["rc"] == 0 else "failed"
    return r


def copy_bandwidth(nbytes: int = 1 << 30, repeat: int = 10) -> float:
    """Device-to-device copy, bytes read + written per second (the bandwidth a kernel can reach)."""
    import torch

    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        b.copy_(a)
    torch.cuda.synchronize()
    return 2 * nbytes * repeat / (time.perf_counter() - t0)


def step_grad_stats(out: str, budget: float) -> dict:
    path = os.path.join(out, "grad_stats.json")
    r = sh([sys.executable, "benchmarks/bench_grad_stats.py", "--device", "cuda", "--train-steps", "0", "--json", path],
           budget, os.path.join(out, "grad_stats.log"))
    if r["rc"] != 0 or not os.path.exists(path):
        return {**r, "status": "failed"}
    copy = copy_bandwidth()
    rows = json.load(open(path))["results"]
    figs = {}
    for x in rows:
        if x["method"] == "ours":
            fe = next(y for y in rows if (y["model"], y["op"], y["method"]) == (x["model"], x["op"], "foreach"))
            figs[f"{x['model']} {x['op']}"] = {"vs_foreach": fe["median_s"] / x["median_s"],
                                               "bandwidth_share": x["bytes"] / x["median_s"] / copy}
    ok = all(f["vs_foreach"] >= 1.3 and f["bandwidth_share"] >= 0.85 for f in figs.values())
    return {**r, "copy_GBps": copy / 1e9, "figures": figs, "targets_met": ok, "status": "ok"}


def step_h2d(out: str, budget: float) -> dict:
    import torch

    n = 256 << 20
    res = {}
    for name, pin in (("pinned", True), ("pageable", False)):
        src = torch.empty(n, dtype=torch.uint8, pin_memory=pin)
        dst = torch.empty(n, dtype=torch.uint8, device="cuda")
        dst.copy_(src, non_blocking=pin)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            dst.copy_(src, non_blocking=pin)
        torch.cuda.synchronize()
        res[f"{name}_GBps"] = 5 * n / (time.perf_counter() - t0) / 1e9
    res.update(prefetch_overlap(out))
    return {**res, "status": "ok"}


def prefetch_overlap(out: str, samples: int = 2048, batch: int = 64) -> dict:
    """Time to read the cache's planned batches to the GPU alone, a matmul workload alone, and
    both interleaved (get, then compute, per batch): overlap = share of the shorter one hidden."""
    import torch

    from autofreeze_ext.cache import ActivationCache

    x = torch.randn(4096, 4096, device="cuda")

    def compute():
        for _ in range(4):
            x @ x

    order = [list(range(s, min(s + batch, samples))) for s in range(0, samples, batch)]
    with ActivationCache(os.path.join(out, "cache"), memory_budget=0, device="cuda") as cache:
        for b in order:
            cache.put(b, 1, torch.randn(len(b), 128, 384, dtype=torch.float16))
        cache.flush()

        def epoch(read: bool, work: bool) -> float:
            if read:
                cache.plan_epoch(order)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for b in order:
                if read:
                    cache.get(b)
                if work:
                    compute()
            torch.cuda.synchronize()
            return time.perf_counter() - t0
        epoch(True, True)  # warm-up
        t_read, t_work, t_both = epoch(True, False), epoch(False, True), epoch(True, True)
    hidden = (t_read + t_work - t_both) / min(t_read, t_work)
    return {"cache_read_s": t_read, "compute_s": t_work, "both_s": t_both, "overlap": max(0.0, min(1.0, hidden))}


#: the GPU runs use the paper's test: the CUDA gradient-statistics kernel runs only under it, and
#: its CPU figures (BENCHMARKS.md) are the ones to compare with (the default, 'late', is ~1.15x)
PAPER_TEST = ("--policy", "gradient")


def step_nccl(out: str, budget: float) -> dict:
    r = sh([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
            "autofreeze_ext.cli", "finetune", "--device", "cuda", "--mode", "autofreeze+cache", *PAPER_TEST,
            "--train-samples", "512", "--epochs", "2", "--no-progress", "--no-plot",
            "--out", os.path.join(out, "nccl")],
           budget, os.path.join(out, "nccl.log"))
    path = os.path.join(out, "nccl", "finetune_autofreeze_cache.json")
    if r["rc"] == 0 and os.path.exists(path):
        rep = json.load(open(path))
        r.update(backend=rep["distributed"]["backend"], world_size=rep["distributed"]["world_size"],
                 best_accuracy=rep["best_accuracy"])
    r["status"] = "ok" if r["rc"] == 0 and r.get("backend") == "nccl" else "failed"
    return r


def step_compare(out: str, budget: float) -> dict:
    r = sh([sys.executable, "-m", "autofreeze_ext.cli", "compare", "--device", "cuda", "--amp", "bf16", "--modes",
            "full,autofreeze+cache", *PAPER_TEST, "--epochs", "3", "--no-progress",
            "--out", os.path.join(out, "compare")],
           budget, os.path.join(out, "compare.log"))
    path = os.path.join(out, "compare", "compare.json")
    if r["rc"] == 0 and os.path.exists(path):
        full, af = json.load(open(path))["runs"]
        r.update(full_s=full["train_time_s"], autofreeze_cache_s=af["train_time_s"],
                 speedup=full["train_time_s"] / af["train_time_s"],
                 delta_best=100 * (af["best_accuracy"] - full["best_accuracy"]))
    r["status"] = "ok" if r["rc"] == 0 and "speedup" in r else "failed"
    return r


RUNNERS: Dict[str, Callable[[str, float], dict]] = {
    "build": step_build, "pytest": step_pytest, "grad_stats": step_grad_stats, "h2d": step_h2d,
    "nccl": step_nccl, "compare": step_compare}


def run_steps(steps: List[str], out: str, budget_s: float, runners: Optional[Dict[str, Callable]] = None,
              clock: Callable[[], float] = time.perf_counter) -> Dict[str, dict]:
    """Each step with at most its share of the budget plus what earlier steps left over; a
    step that raises is recorded as failed; steps after the budget is spent are not run."""
    runners = runners or RUNNERS
    start, results, banked = clock(), {}, 0.0
    for name in steps:
        left = budget_s - (clock() - start)
        allowed = min(left, SHARE[name] * budget_s + banked)
        t0 = clock()
        if allowed < 5:
            results[name] = {"status": "not run", "reason": "time budget spent"}
        else:
            try:
                results[name] = runners[name](out, allowed)
            except Exception as exc:  # one broken step must not cost the others
                results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            banked = max(0.0, allowed - (clock() - t0))
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(results[name], f, indent=1, default=str)
    return results


def _figures(r: dict) -> str:
    keys = [k for k in ("result_line", "compiled_with_cuda", "cache_io", "copy_GBps", "targets_met", "pinned_GBps",
                        "pageable_GBps", "overlap", "backend", "speedup", "delta_best", "reason", "error") if k in r]
    parts = [f"{k}={r[k]:.3g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in keys]
    for name, f in r.get("figures", {}).items():
        parts.append(f"{name}: {f['vs_foreach']:.2f}x foreach, {100 * f['bandwidth_share']:.0f}% of copy")
    return "; ".join(parts)


def write_summary(results: Dict[str, dict], out: str, device: str) -> str:
    """``summary.json`` and ``summary.md`` (one row per step: status, seconds, figures)."""
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"device": device, "steps": results}, f, indent=1, default=str)
    lines = [f"GPU check on {device}", "", "| step | status | seconds | figures |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '-')} | {_figures(r)} |")
    path = os.path.join(out, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop within this many seconds (default 8 min)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    args = ap.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    bad = [s for s in steps if s not in RUNNERS]
    if bad:
        ap.error(f"unknown step(s) {', '.join(bad)}; known: {', '.join(STEPS)}")
    if args.budget_s <= 0:
        ap.error("--budget-s must be positive")
    os.makedirs(args.out, exist_ok=True)
    import torch

    if not torch.cuda.is_available():
        reason = f"no CUDA device (torch {torch.__version__})"
        results = {s: {"status": "skipped", "reason": reason} for s in steps}
        device = "none"
    else:
        device = torch.cuda.get_device_name(0)
        results = run_steps(steps, args.out, args.budget_s)
    path = write_summary(results, args.out, device)
    print(open(path).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
