"""Modes (``full``, ``static:K``, ``static:K@STEP``, ``autofreeze``, any but full with ``+cache``)
and the policy each one runs."""
from __future__ import annotations

from ..policies import (DEFAULT_POLICY, FreezePolicy, NeverFreeze, PolicyOptions, ScheduledFreeze, StaticFreeze,
                        build_policy)
from .config import FinetuneConfig

MODES_HELP = "full | static:K | static:K@STEP | autofreeze | autofreeze+cache"


def split_mode(mode: str):
    """``"autofreeze+cache"`` -> ``("autofreeze", True)``; ``"static:3"`` -> ``("static:3", False)``."""
    m = mode.strip().lower()
    cached = m.endswith("+cache")
    base = m[: -len("+cache")] if cached else m
    if cached and base == "full":
        raise ValueError("mode 'full+cache': nothing is frozen in full fine-tuning, so nothing can be cached")
    return base, cached


def make_mode_policy(mode: str, cfg: FinetuneConfig, num_blocks: int, total_steps: int = 0) -> FreezePolicy:
    """The policy a mode runs: full, static (from the start or at a step), or the adaptive
    policy ``cfg.freeze.policy`` with its options (the LR warm-up as its warm-up guard)."""
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
        f = cfg.freeze
        opts = PolicyOptions(intervals_per_epoch=f.intervals_per_epoch, percentile=f.percentile,
                             threshold=f.threshold, signal=f.signal, patience=f.patience, learned=f.learned,
                             max_new_blocks=f.max_new_blocks,
                             warmup_steps=int(cfg.optim.warmup_ratio * total_steps) if f.warmup_guard else 0,
                             target_speedup=f.target_speedup, total_steps=total_steps or None, cached=cached,
                             freeze_at=f.freeze_at, keep_top=f.keep_top, plateau_patience=f.plateau_patience,
                             min_improvement=f.min_improvement, val_checks_per_epoch=f.val_checks_per_epoch,
                             stop_when_converged=f.stop_when_converged)
        return build_policy(f.policy or DEFAULT_POLICY, opts)
    raise ValueError(f"unknown mode {mode!r}; available modes: {MODES_HELP} (any but full may end in +cache)")


def wants_val_slice(cfg: FinetuneConfig) -> bool:
    """The run holds out (or reads) a validation slice: the user named one, or the mode's policy
    reads it (``plateau``)."""
    from ..policies import reads_val_slice

    if cfg.data.val is not None or cfg.data.val_fraction is not None:
        return True
    m, _ = split_mode(cfg.freeze.mode)
    return m == "autofreeze" and reads_val_slice(cfg.freeze.policy or DEFAULT_POLICY)
