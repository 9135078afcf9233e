"""From a configuration to a run: data, model, optimizer, controller, cache, runner, DDP."""
from __future__ import annotations

import contextlib
import logging
import os
import uuid
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from ..batching import TrimCollate, row_lengths
from ..cache.activation_cache import ActivationCache, CacheError, CacheInUse
from ..samplers import IndexedDataset, PlannedBatchSampler, ShardedBatchSampler
from ..freezing.adapters import resolve_layout
from ..freezing.controller import ControllerOptions, FreezeController
from ..freezing.prefix import FrozenPrefixRunner
from ..parallel import DistContext, FreezingDDP, init_from_env
from ..planning.packing import SampleLinearSchedule
from ..policies import NeverFreeze, ObserveOnly, parse_mode
from ..signals import ALL_SIGNALS, NEEDS_PROBE, make_signals
from ..tasks import encode
from .checkpoint import load_checkpoint, restore, saved_run_id, sharded
from .checks import validate
from .config import FinetuneConfig, packing, pad_multiple
from .inputs import load_tasks
from .outputs import check_outputs
from .model import default_model_path, load_model_and_tokenizer, probe_batch
from .modes import make_mode_policy
from .prefix_clock import PrefixClock
from .record import Record

log = logging.getLogger("autofreeze_ext")


@dataclass
class Run:
    """Everything a run is made of; the loop and its parts read and update it."""

    cfg: FinetuneConfig
    ctx: DistContext
    t_start: float
    train_task: Any
    dev_task: Any
    train: dict
    dev: dict
    model: torch.nn.Module
    model_path: str
    sampler: Any
    loader: DataLoader
    opt: torch.optim.Optimizer
    sched: Any
    packing: bool
    ctl: FreezeController
    ckpt_path: Optional[str]
    state: Optional[dict]  #: the checkpoint resumed from (None: a fresh run)
    total_steps: int
    steps_per_epoch: int
    cached: bool
    run_id: str = ""
    timers: dict = field(default_factory=lambda: defaultdict(float))
    cache: Optional[ActivationCache] = None
    runner: Optional[FrozenPrefixRunner] = None
    ddp: Optional[FreezingDDP] = None
    autocast: Any = None
    scaler: Optional[torch.amp.GradScaler] = None
    clock: Optional[PrefixClock] = None
    prog: Record = field(default_factory=Record)  #: the run's record (the Progress part keeps it); checkpointed
    stopped: Optional[str] = None  #: why the loop ended early (the loop records its parts' outcome)
    tokenizer: Any = None
    metric: str = "accuracy"  #: the dev metric that drives the comparison
    val: Optional[dict] = None  #: the encoded validation slice (None: the run has none)

    @property
    def num_blocks(self) -> int:
        return self.ctl.num_blocks

    @property
    def world(self) -> int:
        """Ranks whose batches make one global batch (1 outside torch.distributed)."""
        return self.ctx.world_size if self.ctx.distributed else 1


def build_run(cfg: FinetuneConfig, t_start: float) -> Run:
    """The whole run, in one call: data and model, optimizer, schedule, controller and AMP; the
    checkpoint restored when resuming (the loop's parts restore their own state); then the
    cache, DDP and the runner. The loop's parts add only the run's record (``prog``) and the
    loop its stop reason (``stopped``)."""
    validate(cfg)
    check_outputs(cfg)
    ctx = init_from_env(cfg.parallel.device)
    tasks = load_tasks(cfg)
    train_task, dev_task, metric = tasks.train, tasks.dev, tasks.metric
    torch.manual_seed(cfg.optim.seed)
    model_path = cfg.run.model or default_model_path()
    model, tok = load_model_and_tokenizer(model_path, train_task.label_space)
    _check_length_limit(cfg, model, model_path)
    model.to(ctx.device)
    if cfg.freeze.freeze_word_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    if ctx.distributed:  # same initial weights on every rank, different dropout masks
        torch.manual_seed(cfg.optim.seed * 7919 + ctx.rank)
    pad_to_max = cfg.data.batching == "padded"
    train = encode(train_task, tok, cfg.data.max_length, pad_to_max=pad_to_max)
    dev = encode(dev_task, tok, cfg.data.max_length)  # evaluation pads each batch to its longest row
    val = encode(tasks.val, tok, cfg.data.max_length) if tasks.val is not None else None
    ckpt_path = os.path.join(cfg.run.checkpoint_dir, "checkpoint.pt") if cfg.run.checkpoint_dir else None
    state = _resume_state(cfg, ckpt_path)
    lengths = row_lengths(train) if cfg.data.batching == "grouped" else None
    sampler = _sampler(cfg, ctx, len(train_task.labels), state, lengths)
    # its own generator: a DataLoader iterator otherwise draws from the global RNG when it is
    # created, and a resumed run creates one mid-epoch (dropout would then differ)
    loader = DataLoader(IndexedDataset(train), batch_sampler=sampler, collate_fn=TrimCollate(pad_multiple(cfg)),
                        generator=torch.Generator().manual_seed(cfg.optim.seed))
    total = len(sampler) * cfg.optim.epochs
    opt, sched = _optimizer(cfg, model, total, len(train_task.labels))
    if cfg.optim.compile:
        # each block on its own: the active suffix runs compiled, frozen blocks get stubbed or
        # run without autograd (dynamo keeps a graph per variant)
        for blk in resolve_layout(model).blocks:
            blk.compile(backend=cfg.optim.compile, dynamic=False)
    ctl = _controller(cfg, model, opt, train, (val, metric), len(sampler), total)
    mode = parse_mode(cfg.freeze.mode)
    if mode.kind == "static" and mode.at >= total:
        log.warning("mode %s: step %d is at or past the run's %d optimizer steps: nothing will freeze",
                    cfg.freeze.mode, mode.at, total)
    autocast, scaler = _amp(cfg, model)
    run = Run(cfg=cfg, ctx=ctx, t_start=t_start, train_task=train_task, dev_task=dev_task, train=train, dev=dev,
              model=model, tokenizer=tok, metric=metric, model_path=model_path, sampler=sampler, loader=loader,
              opt=opt, sched=sched, val=val, autocast=autocast, scaler=scaler, run_id=_run_id(state, ctx),
              packing=packing(cfg), ctl=ctl, ckpt_path=ckpt_path, state=state, total_steps=total,
              steps_per_epoch=len(sampler), cached=mode.cached,
              prog=Record.new(ctl.frozen_depth, cfg.optim.batch_size))
    if state is not None:
        restore(run, state)
    _attach_cache_and_runner(run)  # after the restore: DDP starts from the restored weights and depth
    return run


def _resume_state(cfg: FinetuneConfig, ckpt_path: Optional[str]) -> Optional[dict]:
    """The checkpoint to resume from (``--resume``), or None with a word when there is none."""
    if not cfg.run.resume or not ckpt_path:
        return None
    if os.path.exists(ckpt_path) or os.path.exists(ckpt_path + ".prev"):
        return load_checkpoint(ckpt_path)
    log.warning("--resume: no checkpoint in %s, starting fresh", cfg.run.checkpoint_dir)
    return None


def _check_length_limit(cfg: FinetuneConfig, model, model_path: str) -> None:
    """``--max-length`` within the model's position embeddings (RoBERTa-style models keep two)."""
    conf = model.config
    limit = getattr(conf, "max_position_embeddings", None)
    if limit and getattr(conf, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2
    if limit and cfg.data.max_length > limit:
        raise ValueError(f"--max-length {cfg.data.max_length} is longer than the model's position limit ({limit} "
                         f"tokens, max_position_embeddings in {model_path}/config.json): use --max-length {limit} "
                         "or less")


def _sampler(cfg: FinetuneConfig, ctx: DistContext, n: int, state: Optional[dict], lengths):
    if ctx.distributed or cfg.parallel.data_shards or sharded(state):
        return ShardedBatchSampler(n, cfg.optim.batch_size, world_size=ctx.world_size,
                                   rank=ctx.rank if ctx.distributed else None, shards=cfg.parallel.data_shards,
                                   seed=cfg.optim.seed, reshuffle_shards_every=cfg.parallel.reshuffle_shards_every,
                                   lengths=lengths)
    return PlannedBatchSampler(n, cfg.optim.batch_size, shuffle=True, seed=cfg.optim.seed, lengths=lengths)


def _optimizer(cfg: FinetuneConfig, model, total: int, epoch_samples: int):
    from transformers import get_linear_schedule_with_warmup

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
               "weight_decay": cfg.optim.weight_decay},
              {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    opt = _adamw(groups, cfg.optim.lr)
    if packing(cfg):  # the batch may grow: schedule by samples, LR scaled with the batch
        o = cfg.optim
        return opt, SampleLinearSchedule(opt, o.epochs * epoch_samples, o.warmup_ratio, o.batch_size,
                                         cfg.goal.batch_lr_scaling)
    return opt, get_linear_schedule_with_warmup(opt, int(cfg.optim.warmup_ratio * total), total)


def _adamw(groups, lr: float) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel over all parameters, the Trainer's default optimizer
    ``adamw_torch_fused``) where this torch and device have it, else the for-each version."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, foreach=True)


def _controller(cfg: FinetuneConfig, model, opt, train: dict, val, steps_per_epoch: int,
                total: int) -> FreezeController:
    """``val``: (the encoded validation slice or None, the metric its score is)."""
    policy = make_mode_policy(cfg.freeze.mode, cfg, resolve_layout(model).num_blocks, total,
                              has_val_rows=val[0] is not None)
    if cfg.freeze.record_signals and isinstance(policy, NeverFreeze):
        policy = ObserveOnly(intervals_per_epoch=cfg.freeze.intervals_per_epoch)
    recorded = [n for n in ALL_SIGNALS if n != "val_slice" or val[0] is not None] if cfg.freeze.record_signals else []
    names = [*policy.signals, *recorded]
    needs_probe = set(names) & set(NEEDS_PROBE)
    probe = probe_batch(train, cfg.freeze.probe_samples, cfg.optim.seed, labels=True) if needs_probe else None
    reach = None if cfg.freeze.record_signals else policy.lookahead()  # recording measures every block
    return FreezeController(model, opt, policy, steps_per_epoch=steps_per_epoch,
                            signals=make_signals(names, probe, lookahead=reach, val=val[0], metric=val[1]),
                            options=ControllerOptions(anneal_steps=cfg.freeze.anneal_steps))


def _amp(cfg: FinetuneConfig, model) -> tuple:
    """The step's autocast context and, for fp16, its gradient scaler."""
    device_type = next(model.parameters()).device.type
    dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.optim.amp]
    autocast = torch.autocast(device_type, dtype=dtype) if dtype else contextlib.nullcontext()
    return autocast, (torch.amp.GradScaler(device_type) if dtype == torch.float16 else None)


def _attach_cache_and_runner(run: Run) -> None:
    """The activation cache (``+cache`` modes), DDP over the active suffix (under torchrun) and
    the runner that routes the forward pass through them; the prefix clock."""
    cfg, ctx = run.cfg, run.ctx
    if run.cached:
        if cfg.run.checkpoint_dir and not cfg.cache.dir:
            log.info("the activation cache is in RAM only: a resumed run recomputes it (pass --cache-dir)")
        run.cache = _make_cache(cfg, run.run_id, run.model_path, ctx)
    if ctx.distributed:
        # DDP over the active suffix only, rebuilt after each freeze; the prefix runs outside it
        run.ddp = FreezingDDP(run.model, run.ctl, ctx.device, sync_buffers=False)
        run.runner = FrozenPrefixRunner(run.model, run.ctl, run.cache, cost_model=cfg.cache.cost_model,
                                        timers=run.timers, suffix=run.ddp)
    elif run.cached:
        run.runner = FrozenPrefixRunner(run.model, run.ctl, run.cache, cost_model=cfg.cache.cost_model,
                                        timers=run.timers)
    run.clock = PrefixClock(run.ctl, run.timers)


def _run_id(state: Optional[dict], ctx: DistContext) -> str:
    """The run's id (the cache's fingerprint): the checkpoint's when resuming, else rank 0's new one."""
    from .comm import from_rank0

    return saved_run_id(state) if state else from_rank0(uuid.uuid4().hex, ctx)


def _make_cache(cfg: FinetuneConfig, run_id: str, model_path: str, ctx: DistContext):
    # the files themselves: a resume that names them by another path (a link, another folder)
    # reuses the disk tier, as it resumes the checkpoint
    fp = {"run": run_id, "model": os.path.realpath(model_path), "train": os.path.realpath(cfg.data.train),
          "max_length": cfg.data.max_length, "train_samples": cfg.data.train_samples}
    path = None
    if cfg.cache.dir:
        path = os.path.join(cfg.cache.dir, "activations")
        if ctx.distributed:  # one cache per rank: it holds the samples of the rank's shard
            path = os.path.join(path, f"rank{ctx.rank}")
    try:
        return ActivationCache(path, memory_budget=cfg.cache.memory, disk_budget=cfg.cache.disk, fingerprint=fp,
                               device=ctx.device)
    except CacheInUse:
        raise
    except CacheError as exc:
        warnings.warn(f"{exc}; the disk tier is off, caching in RAM only", RuntimeWarning, stacklevel=2)
        log.warning("%s; the disk tier is off, caching in RAM only", exc)
        return ActivationCache(None, memory_budget=cfg.cache.memory, fingerprint=fp, device=ctx.device)
