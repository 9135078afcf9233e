"""The policy a run's mode runs, with the run's options (the mode grammar itself is
:mod:`autofreeze_ext.policies.modes`)."""
from __future__ import annotations

from ..policies import DEFAULT_POLICY, FreezePolicy, PolicyOptions, make_policy, reads_val_slice
from ..policies.modes import MODES_HELP, parse_mode
from .config import FinetuneConfig

__all__ = ["MODES_HELP", "make_mode_policy", "slice_is_read", "split_mode", "wants_val_slice"]


def split_mode(mode: str):
    """``"autofreeze+cache"`` -> ``("autofreeze", True)``; ``"static:3"`` -> ``("static:3", False)``."""
    cached = parse_mode(mode).cached
    m = mode.strip().lower()
    return (m[: -len("+cache")] if cached else m), cached


def policy_options(cfg: FinetuneConfig, total_steps: int = 0) -> PolicyOptions:
    """The adaptive policy's options from the configuration (the LR warm-up as its warm-up guard)."""
    f = cfg.freeze
    return PolicyOptions(intervals_per_epoch=f.intervals_per_epoch, percentile=f.percentile, threshold=f.threshold,
                         signal=f.signal, patience=f.patience, learned=f.learned, max_new_blocks=f.max_new_blocks,
                         warmup_steps=int(cfg.optim.warmup_ratio * total_steps) if f.warmup_guard else 0,
                         target_speedup=f.target_speedup, total_steps=total_steps or None, freeze_at=f.freeze_at,
                         keep_top=f.keep_top, plateau_patience=f.plateau_patience, min_improvement=f.min_improvement,
                         val_checks_per_epoch=f.val_checks_per_epoch, stop_when_converged=f.stop_when_converged)


def make_mode_policy(mode: str, cfg: FinetuneConfig, num_blocks: int, total_steps: int = 0,
                     has_val_rows: bool = True) -> FreezePolicy:
    """The policy a mode runs: full, static (from the start or at a step), or the adaptive
    policy ``cfg.freeze.policy`` with its options (none named and no validation rows: the
    default's fallback, :func:`~autofreeze_ext.policies.default_policy`)."""
    if parse_mode(mode).kind == "autofreeze" and cfg.freeze.keep_top >= num_blocks:
        raise ValueError(f"--keep-top {cfg.freeze.keep_top}: the model has {num_blocks} blocks, so nothing could "
                         f"freeze; use at most {num_blocks - 1} (or --mode full)")
    return make_policy(mode, num_blocks=num_blocks, options=policy_options(cfg, total_steps),
                       adaptive=cfg.freeze.policy, has_val_rows=has_val_rows)


def _policy_reads_slice(cfg: FinetuneConfig) -> bool:
    return parse_mode(cfg.freeze.mode).kind == "autofreeze" and reads_val_slice(cfg.freeze.policy or DEFAULT_POLICY)


def slice_is_read(cfg: FinetuneConfig) -> bool:
    """Something in the run reads the validation slice: the policy, or the signal recording."""
    return cfg.freeze.record_signals or _policy_reads_slice(cfg)


def wants_val_slice(cfg: FinetuneConfig) -> bool:
    """The run holds out (or reads) a validation slice: the user named one, or the mode's policy
    reads it (``plateau``)."""
    return cfg.data.val is not None or cfg.data.val_fraction is not None or _policy_reads_slice(cfg)
