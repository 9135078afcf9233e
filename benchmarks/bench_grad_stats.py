"""Per-step cost of AutoFreeze's gradient statistics: ours vs torch foreach vs a Python loop.

Parameter sets shaped like BERT-base (~200 tensors, 110M parameters) and MiniLM-L6
(~100 tensors, 22.7M), grouped per block (embeddings, each layer, head). Three operations:

* ``accumulate``: acc += grad for every tensor (every step of an interval),
* ``acc+norm``: the same plus per-block L2 norms (the design's reference measurement, and the
  last step of each interval, where ours also zeroes the accumulators in the same pass),

each timed for: ours (``autofreeze::grad_stats``, C++ or CUDA kernel), ``torch._foreach_add_``
+ per-block ``torch._foreach_norm`` (the strongest plain-PyTorch baseline), and a Python loop
of ``add_`` / ``norm``. All in one run, interleaved; ratios are what to compare.

    python benchmarks/bench_grad_stats.py [--device cuda] [--dtype bf16] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median, print_table, time_interleaved, write_json  # noqa: E402

import autofreeze_ext as af  # noqa: E402


def bert_shapes(hidden: int, inter: int, layers: int, vocab: int = 30522, pos: int = 512) -> List[Tuple[int, Tuple[int, ...]]]:
    """(block, shape) for a BERT-family classifier: block 0 = embeddings, 1..L = layers, L+1 = head."""
    h, i = hidden, inter
    shapes = [(0, (vocab, h)), (0, (pos, h)), (0, (2, h)), (0, (h,)), (0, (h,))]
    for layer in range(1, layers + 1):
        for s in [(h, h), (h,), (h, h), (h,), (h, h), (h,), (h, h), (h,), (h,), (h,), (i, h), (i,), (h, i), (h,), (h,), (h,)]:
            shapes.append((layer, s))
    shapes += [(layers + 1, (h, h)), (layers + 1, (h,)), (layers + 1, (2, h)), (layers + 1, (2,))]
    return shapes


MODELS = {"bert-base": bert_shapes(768, 3072, 12), "minilm-l6": bert_shapes(384, 1536, 6)}


def make(shapes, dtype, device):
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=g).to(device=device, dtype=dtype) for _, s in shapes]
    accs = [torch.zeros(s, device=device).reshape(-1) for _, s in shapes]
    ids = [b for b, _ in shapes]
    return accs, [x.reshape(-1) for x in grads], ids, max(ids) + 1


def methods(accs, grads, ids, nb, with_norm: bool) -> Dict[str, callable]:
    by_block: Dict[int, List[torch.Tensor]] = {}
    for a, b in zip(accs, ids):
        by_block.setdefault(b, []).append(a)

    def ours():
        return af.grad_stats(accs, grads, ids, nb, norm="l2", compute_norms=with_norm)

    def foreach():
        torch._foreach_add_(accs, grads)
        if with_norm:
            return torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v, 2)))
                                for v in by_block.values()])

    def loop():
        for a, g in zip(accs, grads):
            a.add_(g)
        if with_norm:
            return torch.stack([torch.stack([a.norm() for a in v]).norm() for v in by_block.values()])

    return {"ours": ours, "foreach": foreach, "python-loop": loop}


def minilm_model():
    """MiniLM-L6 classifier: the packaged pretrained weights when installed, else the same shape."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from autofreeze_ext.training import ModelError, default_model_path

    try:
        return AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=2), "pretrained"
    except ModelError:
        cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
        return BertForSequenceClassification(cfg), "random-init"


def train_step_overhead(steps: int) -> dict:
    """Share of a real MiniLM training step (batch 32, seq 64, AdamW) spent in the statistics,
    timed around the controller's accumulation inside the loop."""
    import time

    torch.manual_seed(0)
    model, weights = minilm_model()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    ctl = af.FreezeController(model, opt, af.GradientNormTest(interval_steps=10))
    spent = []
    orig = ctl.stats.accumulate

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = orig(*a, **k)
        spent.append(time.perf_counter() - t0)
        return out

    ctl.stats.accumulate = timed
    ids = torch.randint(1000, 20000, (32, 64))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (32,))}
    model.train()
    step_times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
        step_times.append(time.perf_counter() - t0)
    step_times, spent = step_times[2:], spent[2:]
    n_stat = sum(p.numel() for b in ctl.layout.blocks for p in b.parameters())
    return {"weights": weights, "steps": steps, "step_median_s": median(step_times), "stats_median_s": median(spent),
            "stats_share": median(spent) / median(step_times), "stat_params": n_stat}


def validation_cost(accs, grads, ids, nb, repeat: int = 200) -> float:
    """The op's input checks (every tensor's dtype, layout, contiguity, device and size, and
    the pointers the kernel needs), seconds per call."""
    import time

    from autofreeze_ext.ops.grad_stats import validate

    validate(accs, grads, ids, nb, "l2")
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        validate(accs, grads, ids, nb, "l2")
        t.append(time.perf_counter() - t0)
    return median(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--models", default="bert-base,minilm-l6")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default="bench_out/grad_stats.json")
    ap.add_argument("--train-steps", type=int, default=12,
                    help="real MiniLM training steps for the overhead measurement (0 = skip)")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    info = af.backend_info()
    print(f"machine: {machine()}")
    print(f"backend: grad_stats on {args.device}: {info['grad_stats']['cuda' if args.device.startswith('cuda') else 'cpu']}")
    rows, results = [], []
    for model in args.models.split(","):
        shapes = MODELS[model]
        accs, grads, ids, nb = make(shapes, dtype, args.device)
        n_params = sum(a.numel() for a in accs)
        for op, with_norm in (("accumulate", False), ("acc+norm", True)):
            t = time_interleaved(methods(accs, grads, ids, nb, with_norm), args.repeat, args.warmup, args.device)
            med = {k: median(v) for k, v in t.items()}
            # bytes moved by one pass: read grad + read acc + write acc
            nbytes = n_params * (grads[0].element_size() + 8)
            for k in med:
                results.append({"model": model, "op": op, "method": k, "median_s": med[k], "times_s": t[k],
                                "tensors": len(accs), "params": n_params, "bytes": nbytes})
            rows.append([model, op, len(accs), f"{n_params / 1e6:.1f}M", f"{med['ours'] * 1e3:.2f}",
                         f"{med['foreach'] * 1e3:.2f}", f"{med['python-loop'] * 1e3:.2f}",
                         f"{med['foreach'] / med['ours']:.2f}x", f"{med['python-loop'] / med['ours']:.2f}x",
                         f"{nbytes / med['ours'] / 1e9:.1f}"])
    print()
    print_table(["model", "op", "tensors", "params", "ours ms", "foreach ms", "loop ms", "vs foreach", "vs loop",
                 "ours GB/s"], rows)
    checks = {}
    for model in args.models.split(","):
        accs, grads, ids, nb = make(MODELS[model], dtype, args.device)
        checks[model] = validation_cost(accs, grads, ids, nb)
        ours = next(r["median_s"] for r in results if r["model"] == model and r["method"] == "ours"
                    and r["op"] == "accumulate")
        print(f"input checks per call, {model} ({len(accs)} tensors): {checks[model] * 1e6:.0f} us "
              f"({100 * checks[model] / ours:.2f}% of the accumulate call)")
    overhead = None
    if args.train_steps and args.device == "cpu":
        overhead = train_step_overhead(args.train_steps)
        print(f"\nMiniLM-L6 training step ({overhead['weights']} weights, batch 32, seq 64, AdamW): "
              f"step {overhead['step_median_s'] * 1e3:.0f} ms, statistics {overhead['stats_median_s'] * 1e3:.2f} ms "
              f"({overhead['stat_params'] / 1e6:.1f}M block parameters) = {100 * overhead['stats_share']:.2f}% of the step")
    write_json(args.json, {"benchmark": "grad_stats", "device": args.device, "dtype": args.dtype, "machine": machine(),
                           "backend": info, "results": results, "train_step_overhead": overhead,
                           "input_checks_s": checks})


if __name__ == "__main__":
    main()
