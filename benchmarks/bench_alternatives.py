"""AutoFreeze beside what a user weighs it against, in one Lightning setup (issue 29).

Methods, each a fresh model on the same rows, seed, batches (grouped by length, each padded to
its longest row), optimizer (AdamW, decay 0.01, linear schedule, 10% warm-up) and Lightning
``Trainer``, one after the other in this process:

* ``full``: full fine-tuning (the reference);
* ``autofreeze``: :class:`~autofreeze_ext.integrations.lightning.AutoFreezeLightning` with the
  default policy and the activation cache (``cached_forward``);
* ``backbone``: Lightning's ``BackboneFinetuning()`` with its documented defaults (the backbone,
  embeddings and encoder, frozen until epoch 10, then trained at a tenth of the LR): in runs
  shorter than 10 epochs only the classifier trains, at the fine-tuning LR (a linear probe);
* ``static-half``: the embeddings and the bottom half of the blocks frozen from the start
  (``AutoFreezeLightning("static:half", cache=True)``);
* ``lora``: LoRA through ``peft`` (r=8, alpha 16, dropout 0.1 on query and value; the classifier
  trained; LR ``--lora-lr``, default 5e-4, the usual order for LoRA on GLUE-size tasks).

    python benchmarks/bench_alternatives.py --task sst2 --seed 0         # 8,000 rows, 3 epochs
    python benchmarks/bench_alternatives.py --task mrpc --seed 0         # all 3,668 pairs

Writes ``OUT/TASK_seedS.json`` after each method (a rerun skips the methods done); ``--summary``
prints the table over every report in OUT. Training time excludes the dev evaluations (one per
epoch); the dev metric is accuracy. Data: ``../shared/data``; model: the packaged MiniLM-L6.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import lightning.pytorch as L
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, print_table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")
METHODS = ("full", "autofreeze", "backbone", "static-half", "lora")
TASKS = {"sst2": {"samples": 8000, "max_length": 64}, "mrpc": {"samples": None, "max_length": 128}}


def load(task: str, samples=None):
    from autofreeze_ext.tasks import encode, load_task
    from autofreeze_ext.training.model import default_model_path
    from transformers import AutoTokenizer

    t = TASKS[task]
    train_path, dev_path = (os.path.join(DATA, task, f) for f in ("train.tsv", "dev.tsv"))
    train = load_task(train_path, limit=samples or t["samples"])
    dev = load_task(dev_path, label_space=train.label_space, train_path=train_path)
    tok = AutoTokenizer.from_pretrained(default_model_path())
    return encode(train, tok, t["max_length"]), encode(dev, tok, t["max_length"]), train.label_space


class Rows(torch.utils.data.Dataset):
    """Each row a dict with its index in the training set (the cache's key)."""

    def __init__(self, tensors: dict) -> None:
        self.t, self.n = tensors, len(tensors["labels"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"index": i, **{k: v[i] for k, v in self.t.items()}}


def collate(rows) -> dict:
    from autofreeze_ext.batching import trim_batch

    return trim_batch(torch.utils.data.default_collate(rows))


def loader(train: dict, batch: int, seed: int):
    from autofreeze_ext.batching import row_lengths
    from autofreeze_ext.samplers import PlannedBatchSampler

    # a new shuffle every epoch, rows of similar length batched together: the CLI's default batching
    sampler = PlannedBatchSampler(len(train["labels"]), batch, seed=seed, lengths=row_lengths(train))
    return torch.utils.data.DataLoader(Rows(train), batch_sampler=sampler, collate_fn=collate)


def make_module(method: str, labels, args):
    """The LightningModule of ``method``: the same model, loss and optimizer for all."""
    from autofreeze_ext.integrations.lightning import cached_forward
    from autofreeze_ext.training.model import load_model_and_tokenizer

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(args.seed)
            self.model, _ = load_model_and_tokenizer(None, labels)
            if method == "backbone":
                self.backbone = self.model.bert  # what BackboneFinetuning freezes
            if method == "lora":
                self.model = _lora(self.model)

        def training_step(self, batch, batch_idx):
            idx = batch.pop("index")
            out = cached_forward(self, idx, **batch) if method in ("autofreeze", "static-half") else self.model(**batch)
            return out.loss

        def configure_optimizers(self):
            from transformers import get_linear_schedule_with_warmup

            lr = args.lora_lr if method == "lora" else args.lr
            # what requires grad now (BackboneFinetuning's documented form; the same set for every
            # other method: the callbacks freeze after configure_optimizers)
            opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
            total = self.trainer.estimated_stepping_batches
            sched = get_linear_schedule_with_warmup(opt, int(0.1 * total), total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Module()


def _lora(model):
    from peft import LoraConfig, TaskType, get_peft_model

    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                     target_modules=["query", "value"])
    return get_peft_model(model, cfg)


def callbacks(method: str) -> list:
    from lightning.pytorch.callbacks import BackboneFinetuning

    from autofreeze_ext.integrations.lightning import AutoFreezeLightning

    if method == "autofreeze":
        return [AutoFreezeLightning(cache=True)]
    if method == "static-half":
        return [AutoFreezeLightning("static:half", cache=True)]
    if method == "backbone":
        return [BackboneFinetuning()]
    return []


def run_method(method: str, data, args) -> dict:
    train, dev, labels = data
    module = make_module(method, labels, args)
    timer = EpochTimer(dev)
    t = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                  enable_model_summary=False, enable_progress_bar=args.progress, num_sanity_val_steps=0,
                  callbacks=[*callbacks(method), timer])
    t.fit(module, loader(train, args.batch_size, args.seed))
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    af = next((c for c in t.callbacks if type(c).__name__ == "AutoFreezeLightning"), None)
    counters = af.cache_counters if af is not None else {}
    return {"method": method, "train_s": timer.seconds, "dev": timer.scores, "best": max(timer.scores),
            "final": timer.scores[-1], "steps": t.global_step, "trainable_at_end": trained,
            "frozen_depth": af.controller.frozen_depth if af is not None else None,
            "cache_hit_rate": counters.get("hit_rate"), "load_average": list(os.getloadavg())}


class EpochTimer(L.Callback):
    """Training time per epoch (the dev evaluation at its end excluded) and the dev scores."""

    def __init__(self, dev: dict) -> None:
        self.dev, self.seconds, self.scores, self.t0 = dev, 0.0, [], 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from autofreeze_ext.training.evaluate import evaluate

        self.seconds += time.perf_counter() - self.t0
        self.scores.append(100 * evaluate(pl_module.model, self.dev))
        pl_module.train()


def summary(out: str) -> None:
    reports = [json.load(open(os.path.join(out, f))) for f in sorted(os.listdir(out)) if f.endswith(".json")]
    rows = []
    for task in sorted({r["task"] for r in reports}):
        mine = [r for r in reports if r["task"] == task]
        for m in METHODS:
            runs = [(r["methods"][m], r["methods"]["full"]) for r in mine if m in r["methods"] and "full" in r["methods"]]
            if not runs:
                continue
            speed = [f["train_s"] / x["train_s"] for x, f in runs]
            best = [x["best"] - f["best"] for x, f in runs]
            final = [x["final"] - f["final"] for x, f in runs]
            rows.append([task, m, len(runs), _ms(speed, "x"), _ms([x["best"] for x, _ in runs]), _ms(best),
                         _ms(final), f"{statistics.mean(x['trainable_at_end'] for x, _ in runs) / 1e6:.2f}M"])
    print_table(["task", "method", "seeds", "speedup vs full (same run)", "best dev acc", "Δ best", "Δ final",
                 "trainable at end"], rows)
    print("plot:", plot(reports, os.path.join(out, "alternatives.png")))


FLOOR = -6.0  # the plot's lowest Δ best (points)


def plot(reports: list, path: str) -> str:
    """Δ best against the speedup over full fine-tuning, each method's mean ± sd, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autofreeze_ext.plots import save_figure

    tasks = sorted({r["task"] for r in reports})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for k, m in enumerate(METHODS):
            runs = [(r["methods"][m], r["methods"]["full"]) for r in reports
                    if r["task"] == task and m in r["methods"] and "full" in r["methods"]]
            if not runs:
                continue
            sp = [f["train_s"] / x["train_s"] for x, f in runs]
            db = [x["best"] - f["best"] for x, f in runs]
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
            x, y = statistics.mean(sp), statistics.mean(db)
            if y < FLOOR:  # off the scale (a method that did not learn): drawn at the floor, value written
                ax.plot([x], [FLOOR], "v", color=plt.cm.tab10(k), label=f"{m} ({len(runs)} seeds): {y:.1f}")
                continue
            ax.errorbar(x, y, xerr=sd(sp), yerr=sd(db), fmt="o", color=plt.cm.tab10(k), capsize=3,
                        label=f"{m} ({len(runs)} seeds)")
        ax.axhline(-0.5, color="grey", ls="--", lw=0.8)
        ax.set_ylim(FLOOR - 0.5, 1.0)
        ax.set_xlabel("training speedup over full fine-tuning (same run)")
        ax.set_ylabel("Δ best dev accuracy (points)")
        ax.set_title(task)
    return save_figure(fig, axes[0], path)


def _ms(xs, unit="") -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.2f} ± {sd:.2f}{unit}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="sst2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=None, help="the first N training rows (default: the task's)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--lora-lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "alternatives"))
    ap.add_argument("--summary", action="store_true", help="only print the table of the reports in --out")
    args = ap.parse_args(argv)
    if args.summary:
        summary(args.out)
        return 0
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.task}_seed{args.seed}.json")
    report = json.load(open(path)) if os.path.exists(path) else {"task": args.task, "seed": args.seed, "methods": {}}
    report["machine"] = machine()
    data = load(args.task, args.samples)
    for m in [m for m in args.methods.split(",") if m]:
        if m in report["methods"]:
            continue
        report["methods"][m] = run_method(m, data, args)
        print(f"{args.task} seed {args.seed} {m}: {report['methods'][m]['train_s']:.0f} s, "
              f"best {report['methods'][m]['best']:.2f}", flush=True)
        with open(path + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
