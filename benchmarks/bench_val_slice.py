"""What one check of the plateau policy's validation slice costs, and what would make it cheaper.

The policy's overhead is its slice forwards (`ValSlice.measure`: no-grad, eval mode, rows longest
first, batches cut to their longest row). This times that forward on SST-2 rows with the packaged
MiniLM-L6 at the default 32-row batches against other batch sizes and against bfloat16 autocast
(same run, alternating, one thread), and says how far the bf16 scores and losses move from the
float32 ones after some training (so that its logits are not those of an untrained head).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_val_slice.py --out benchmarks/results/val_slice.json

Nothing here changes the policy; the figures are in BENCHMARKS.md ("Policy overhead").
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, write_json  # noqa: E402

from autofreeze_ext.batching import batched_logits, longest_first, trim_batch  # noqa: E402
from autofreeze_ext.training.model import load_model_and_tokenizer  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "sst2", "train.tsv")


def encoded_rows(tok, n_train: int, n_val: int, max_length: int = 64):
    with open(DATA, newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(0))[:n_train + n_val].tolist()
    enc = tok([table[i]["sentence"] for i in order], padding="max_length", truncation=True,
              max_length=max_length, return_tensors="pt")
    rows = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    rows["labels"] = torch.tensor([int(table[i]["label"]) for i in order])
    return ({k: v[:n_train] for k, v in rows.items()}, {k: v[n_train:] for k, v in rows.items()})


def train_a_little(model, rows: dict, steps: int, batch: int = 32) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for s in range(steps):
        idx = torch.arange(s * batch, (s + 1) * batch) % len(rows["labels"])
        model(**trim_batch({k: v[idx] for k, v in rows.items()})).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def check(model, val: dict, order, batch: int, bf16: bool):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx:
        logits = batched_logits(model, val, order, batch)
    seconds = time.perf_counter() - t0
    labels = val["labels"][torch.tensor(order)]
    return seconds, logits, float(F.cross_entropy(logits, labels)), float((logits.argmax(-1) == labels).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val-rows", type=int, default=400, help="the slice (400: 5%% of 8,000 rows)")
    ap.add_argument("--train-steps", type=int, default=60, help="steps of training before the checks")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(None, 2)
    train, val = encoded_rows(tok, 32 * args.train_steps, args.val_rows)
    train_a_little(model, train, args.train_steps)
    order = longest_first(val)
    settings = [(32, False), (16, False), (64, False), (128, False), (32, True)]
    times = {s: [] for s in settings}
    results = {}
    for _ in range(args.repeats):  # alternating, so drift hits every setting alike
        for s in settings:
            sec, logits, loss, acc = check(model, val, order, *s)
            times[s].append(sec)
            results[s] = (logits, loss, acc)
    ref_logits, ref_loss, ref_acc = results[(32, False)]
    rows = []
    for (batch, bf16), ts in times.items():
        logits, loss, acc = results[(batch, bf16)]
        rows.append({"batch": batch, "precision": "bf16" if bf16 else "fp32", "seconds_min": min(ts),
                     "ms_per_row": 1e3 * min(ts) / args.val_rows, "x_default": min(ts) / min(times[(32, False)]),
                     "loss": loss, "accuracy": acc, "loss_diff": loss - ref_loss, "accuracy_diff": acc - ref_acc,
                     "max_logit_diff": float((logits - ref_logits).abs().max()),
                     "argmax_agree": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())})
    print(f"{'batch':>5} {'prec':>5} {'s/check':>8} {'x default':>9} {'loss diff':>10} {'acc diff':>9} "
          f"{'max |dlogit|':>12} {'argmax agree':>12}")
    for r in rows:
        print(f"{r['batch']:>5} {r['precision']:>5} {r['seconds_min']:>8.3f} {r['x_default']:>9.2f} "
              f"{r['loss_diff']:>+10.2e} {r['accuracy_diff']:>+9.4f} {r['max_logit_diff']:>12.2e} "
              f"{r['argmax_agree']:>12.4f}")
    if args.out:
        write_json(args.out, {"machine": machine(), "threads": torch.get_num_threads(), "args": vars(args),
                              "rows": rows})


if __name__ == "__main__":
    main()
