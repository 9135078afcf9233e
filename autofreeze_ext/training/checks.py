"""Every check of a run's configuration: values and option combinations, before anything is
loaded (``ValueError`` naming the option)."""
from __future__ import annotations

import dataclasses
import math

from ..cache.activation_cache import parse_bytes
from .config import DataConfig, FinetuneConfig, FreezeConfig, choices_of, option_flag, sections


def validate(cfg: FinetuneConfig) -> None:
    """Every check of values and option combinations, before anything is loaded (``ValueError``
    names the option)."""
    o, g = cfg.optim, cfg.goal
    _at_least(("--epochs", o.epochs, 1), ("--batch-size", o.batch_size, 1), ("--max-length", cfg.data.max_length, 1),
              ("--evals-per-epoch", cfg.run.evals_per_epoch, 1), ("--grad-accum", o.grad_accum, 1),
              ("--train-samples", cfg.data.train_samples, 1), ("--pad-to-multiple-of", cfg.data.pad_to_multiple_of, 1))
    if o.grad_accum > o.batch_size:
        raise ValueError(f"--grad-accum {o.grad_accum} is larger than --batch-size {o.batch_size}: each micro-batch "
                         "needs at least one row")
    if cfg.data.train != DataConfig.train and cfg.data.dev == DataConfig.dev:
        raise ValueError(f"--train {cfg.data.train} without --dev: the built-in SST-2 dev set would score it; pass "
                         "--dev FILE, held-out rows with the same columns and labels")
    if cfg.data.val_fraction is not None and not 0 < cfg.data.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {cfg.data.val_fraction}")
    if cfg.data.val is not None and cfg.data.val_fraction is not None:
        raise ValueError("--val FILE and --val-fraction both name the validation slice: pass one")
    if cfg.run.resume and not cfg.run.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir")
    if g.max_batch is not None or g.max_activation_memory is not None:
        if g.kind != "time":
            raise ValueError("--max-batch and --max-activation-memory belong to --mode-goal time")
        if g.max_batch is None:
            raise ValueError("--max-activation-memory needs --max-batch (the largest global batch allowed)")
        if g.max_batch < o.batch_size:
            raise ValueError(f"--max-batch {g.max_batch} is smaller than --batch-size {o.batch_size}")
    for what, v in (("--max-activation-memory", g.max_activation_memory), ("--cache-memory", cfg.cache.memory),
                    ("--cache-disk", cfg.cache.disk)):
        try:
            parse_bytes(v)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_freeze(cfg.freeze)


def _at_least(*checks) -> None:
    """``(option, value, lowest allowed)`` each; a value of None (option not given) passes."""
    for name, value, low in checks:
        if value is not None and not value >= low:  # NaN fails too
            raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_choices(cfg: FinetuneConfig) -> None:
    """Every field that declares ``choices`` holds one of them (or None, where None is its default)."""
    for sec, cls in sections():
        for f in dataclasses.fields(cls):
            choices = choices_of(f)
            value = getattr(getattr(cfg, sec), f.name)
            if choices is None or (value is None and f.default is None):
                continue
            if value not in choices:
                raise ValueError(f"{option_flag(f)}: unknown value {value!r}; choose one of {', '.join(choices)}")


def _check_ranges(cfg: FinetuneConfig) -> None:
    o, g, p = cfg.optim, cfg.goal, cfg.parallel
    _at_least(("--checkpoint-every", cfg.run.checkpoint_every, 1), ("--probe-steps", g.probe_steps, 1),
              ("--min-workers", g.min_workers, 1), ("--data-shards", p.data_shards, 1),
              ("--reshuffle-shards-every", p.reshuffle_shards_every, 0),
              ("--stop-after-steps", cfg.run.stop_after_steps, 1),
              ("--deadline-s", g.deadline_s, 0), ("--restart-s", g.restart_s, 0))
    if not o.lr > 0:
        raise ValueError(f"--lr must be > 0, got {o.lr}")
    if not 0 <= o.warmup_ratio < 1:
        raise ValueError(f"--warmup-ratio must be in [0, 1), got {o.warmup_ratio}")
    if not o.weight_decay >= 0:
        raise ValueError(f"--weight-decay must be >= 0, got {o.weight_decay}")
    if not 0 <= g.min_packing_gain < 1:
        raise ValueError(f"--min-packing-gain must be in [0, 1), got {g.min_packing_gain}")


def _check_freeze(f: FreezeConfig) -> None:
    from ..policies.modes import parse_mode

    parse_mode(f.mode)  # ValueError naming the grammar
    _at_least(("--intervals-per-epoch", f.intervals_per_epoch, 1), ("--patience", f.patience, 1),
              ("--probe-samples", f.probe_samples, 1), ("--anneal-steps", f.anneal_steps, 0),
              ("--max-new-blocks", f.max_new_blocks, 1))
    if not 0 < f.percentile <= 100:
        raise ValueError(f"--percentile must be in (0, 100], got {f.percentile}")
    if f.learned is not None and not 0 < f.learned <= 1:
        raise ValueError(f"--learned must be in (0, 1] or off, got {f.learned}")
    if f.target_speedup is not None and not f.target_speedup >= 1:
        raise ValueError(f"--target-speedup must be >= 1, got {f.target_speedup}")
    if not 0 < f.freeze_at <= 1:
        raise ValueError(f"--freeze-at must be a fraction of the run in (0, 1], got {f.freeze_at}")
    if f.threshold is not None and f.threshold < 0:
        raise ValueError(f"--threshold must be >= 0, got {f.threshold}")
    _at_least(("--keep-top", f.keep_top, 0), ("--plateau-patience", f.plateau_patience, 1),
              ("--val-checks-per-epoch", f.val_checks_per_epoch, 1), ("--min-improvement", f.min_improvement, 0))
    if math.isinf(f.min_improvement):
        raise ValueError("--min-improvement must be finite: with inf no score could count as a gain")
