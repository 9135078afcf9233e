"""Policies by name, for the CLI, the Trainer callback and ``make_policy``."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from .base import FreezePolicy, NeverFreeze, ScheduledFreeze, StaticFreeze
from .budget import SpeedBudget
from .gradient_test import GradientNormTest
from .guards import Guards
from .late import LateFreeze
from .modes import MODES_HELP, parse_mode
from .plateau import PlateauFreeze
from .stability import GuardedGradientTest, StabilityPolicy


@dataclass
class PolicyOptions:
    """Every policy option the CLI exposes (None: the policy's own default)."""

    intervals_per_epoch: int = 5
    percentile: float = 50.0
    threshold: Optional[float] = None
    signal: str = "probe_drift"
    patience: int = 2
    learned: Optional[float] = 0.75
    max_new_blocks: Optional[int] = 1
    warmup_steps: int = 0
    target_speedup: Optional[float] = None
    total_steps: Optional[int] = None
    freeze_at: float = 0.8  #: policy late: the fraction of the run after which the prefix freezes
    cached: bool = True  #: the activation cache is on (the budget's model of a frozen block)
    keep_top: int = 1  #: the top blocks that always train
    plateau_patience: int = 2  #: policy plateau: validation checks without improvement that make a plateau
    min_improvement: float = 0.0  #: policy plateau: how much the score must beat its best to count
    val_checks_per_epoch: int = 2  #: policy plateau: validation slice checks per epoch
    stop_when_converged: bool = False  #: policy plateau: stop the run when the top block plateaus too

    def guards(self) -> Guards:
        return Guards(warmup_steps=self.warmup_steps, learned=self.learned, max_new_blocks=self.max_new_blocks,
                      patience=self.patience, keep_last=self.keep_top)


def _stability(o: PolicyOptions) -> StabilityPolicy:
    kw = {} if o.threshold is None else {"threshold": o.threshold}
    return StabilityPolicy(signal=o.signal, guards=o.guards(), intervals_per_epoch=o.intervals_per_epoch, **kw)


def _budget(o: PolicyOptions) -> SpeedBudget:
    if o.target_speedup is None or o.total_steps is None:
        raise ValueError("policy 'budget' needs a target speedup (--target-speedup 2.0) and the run's total steps")
    return SpeedBudget(o.target_speedup, o.total_steps, inner=_stability(o), frozen_cost=0.05 if o.cached else 0.35)


def _late(o: PolicyOptions) -> LateFreeze:
    if o.total_steps is None:
        raise ValueError("policy 'late' needs the run's total optimizer steps (PolicyOptions.total_steps)")
    return LateFreeze(o.freeze_at, o.total_steps, guards=o.guards(), intervals_per_epoch=o.intervals_per_epoch)


def _plateau(o: PolicyOptions, freeze_by: Optional[float] = None) -> PlateauFreeze:
    return PlateauFreeze(o.plateau_patience, o.min_improvement, guards=o.guards(),
                         checks_per_epoch=o.val_checks_per_epoch, stop_when_converged=o.stop_when_converged,
                         freeze_by=freeze_by, total_steps=o.total_steps)


def _plateau_or_late(o: PolicyOptions) -> PlateauFreeze:
    if o.total_steps is None:
        raise ValueError("policy 'plateau-or-late' needs the run's total optimizer steps (PolicyOptions.total_steps)")
    return _plateau(o, freeze_by=o.freeze_at)


#: name -> (builder, one line for --help)
POLICIES: Dict[str, tuple] = {
    "stability": (_stability, "a block freezes once its own probe-batch drift stays below --threshold "
                              "(absolute; guards: warm-up, learning started, patience, one block per interval)"),
    "gradient": (lambda o: GradientNormTest(o.percentile, o.intervals_per_epoch),
                 "the paper's gradient-norm test, exactly (reproduction)"),
    "gradient+guards": (lambda o: GuardedGradientTest(o.percentile, o.guards(), o.intervals_per_epoch),
                        "the paper's test per block behind the guards"),
    "late": (_late, "all blocks but the top one freeze at once after --freeze-at of the run (default 0.8), once "
                    "the model has started learning (guard); a late static freeze chosen in advance"),
    "plateau": (_plateau, "all blocks but the top one (--keep-top) freeze at once when a validation slice "
                          "(5% of the training rows held out, or --val FILE) has not improved for "
                          "--plateau-patience checks; --stop-when-converged ends the run when it plateaus again"),
    "plateau-or-late": (_plateau_or_late, "as plateau, and at --freeze-at of the run at the latest"),
    "budget": (_budget, "meet --target-speedup, freezing as late as it allows, in the order 'stability' suggests"),
}
#: the adaptive policy of ``--mode autofreeze`` and of the integrations when no policy is given,
#: chosen by the rule stated before the regime sweeps' results (BENCHMARKS.md, "Converged runs":
#: mean Δ best >= -0.5 on every development task in short and over-long runs, then time to
#: accuracy; ``late``, the default before, fails the held-out checks). The paper's test stays
#: available as ``gradient``.
DEFAULT_POLICY = "plateau"
#: the default of a run that has no validation rows when :data:`DEFAULT_POLICY` reads a validation
#: slice: the Trainer and Lightning callbacks cannot hold rows out of a dataloader already built
NO_VAL_DEFAULT = "late"


def default_policy(has_val_rows: bool = True) -> str:
    """The adaptive policy a run gets when it names none: :data:`DEFAULT_POLICY`, or
    :data:`NO_VAL_DEFAULT` (with a warning) where the default reads a validation slice and the
    run has no validation rows."""
    if has_val_rows or not reads_val_slice(DEFAULT_POLICY):
        return DEFAULT_POLICY
    logging.getLogger("autofreeze_ext").warning(
        "the default policy %r reads a validation slice and this run has none (pass val_data=rows never "
        "trained on to the Trainer or Lightning integration, or --val FILE to the CLI): using %r instead",
        DEFAULT_POLICY, NO_VAL_DEFAULT)
    return NO_VAL_DEFAULT


def reads_val_slice(spec: Optional[str] = None) -> bool:
    """The policy ``spec`` names reads the validation slice (the run must hold one out): a
    policy name, a mode string (``autofreeze[+cache]``: the default policy; ``full``,
    ``static:...``: none) or None (the default policy); asked of the policy itself
    (:attr:`FreezePolicy.reads_val_slice`), built with placeholder run facts."""
    name = check_spec(spec) if spec else DEFAULT_POLICY
    if name not in POLICIES:
        if parse_mode(name).kind != "autofreeze":
            return False
        name = DEFAULT_POLICY
    return build_policy(name, PolicyOptions(total_steps=1_000, target_speedup=2.0)).reads_val_slice


def build_policy(name: str, options: Optional[PolicyOptions] = None) -> FreezePolicy:
    """The adaptive policy ``name`` (see :data:`POLICIES`) with ``options``."""
    entry = POLICIES.get(name.strip().lower())
    if entry is None:
        raise ValueError(f"unknown policy {name!r}: choose one of {', '.join(POLICIES)}")
    builder: Callable[[PolicyOptions], FreezePolicy] = entry[0]
    return builder(options or PolicyOptions())


def check_spec(spec: str) -> str:
    """``spec`` normalised when it names a policy or a mode; ``ValueError`` saying both kinds."""
    name = spec.strip().lower()
    if name in POLICIES:
        return name
    if name.split(":")[0].split("+")[0] in ("full", "static", "autofreeze"):
        parse_mode(name)  # its own message for a malformed mode
        return name
    raise ValueError(f"unknown policy {spec!r}: choose a policy ({', '.join(POLICIES)}) or a mode ({MODES_HELP})")


def make_policy(spec: str, total_steps: Optional[int] = None, *, num_blocks: Optional[int] = None,
                options: Optional[PolicyOptions] = None, adaptive: Optional[str] = None,
                has_val_rows: bool = True) -> FreezePolicy:
    """The policy of a mode string (:data:`~autofreeze_ext.policies.modes.MODES_HELP`: ``full``,
    ``static:K``, ``static:half``, ``static:all``, ``static:K@STEP``, ``autofreeze``; a
    ``+cache`` suffix sets ``options.cached``) or of a policy name from :data:`POLICIES`.

    ``autofreeze`` is the adaptive policy ``adaptive`` (default: :func:`default_policy` of
    ``has_val_rows``, whether the run has validation rows);
    ``total_steps`` (the run's optimizer steps) is needed by the policies that plan over the run
    (``late``, ``budget``, ``plateau-or-late``); ``num_blocks`` by ``static:half``
    and ``static:all``; ``options`` are the policy's options (default ``PolicyOptions()``)."""
    o = dataclasses.replace(options) if options is not None else PolicyOptions()
    if total_steps is not None:
        o.total_steps = total_steps
    name = check_spec(spec)
    if name in POLICIES:
        return build_policy(name, o)
    mode = parse_mode(name)
    o.cached = mode.cached
    if mode.kind == "full":
        return NeverFreeze()
    if mode.kind == "static":
        if num_blocks is None and mode.depth in ("half", "all"):
            raise ValueError(f"policy static:{mode.depth} needs the model's number of blocks (num_blocks=)")
        k = mode.blocks(num_blocks) if num_blocks is not None else int(mode.depth)
        return ScheduledFreeze([(mode.at, k)]) if mode.at else StaticFreeze(k)
    return build_policy(adaptive or default_policy(has_val_rows), o)
