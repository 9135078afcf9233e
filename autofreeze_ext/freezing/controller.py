"""FreezeController: applies a policy's freezing decisions to a model and its optimizer."""
from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..parallel.rank_sync import resolve_group
from ..policies import FreezePolicy, GradientNormTest, IntervalStats
from ..signals import Signal
from .adapters import BlockLayout, ModuleOrList, resolve_layout
from .history import describe, interval_entry
from .soft_freeze import SoftFreeze
from ..timing import now
from .stats import GradientStatistics

log = logging.getLogger("autofreeze_ext")

FreezeListener = Callable[[int, int], None]


def _keep_eval(module: nn.Module, args) -> None:
    """Forward pre-hook on frozen modules: a later ``model.train()`` does not re-enable dropout
    or batch-norm updates in them."""
    if module.training:
        module.eval()


@dataclass
class ControllerOptions:
    """How a :class:`FreezeController` works in, beyond its policy and signals.

    Args:
        max_depth: the most blocks that may freeze (default: all of them; the gradient test
            never freezes the last active block on its own).
        attach: hook ``optimizer.step()`` (default) or leave :meth:`FreezeController.step` to
            the caller.
        grad_scaler: with ``attach=False`` and AMP, pass the ``GradScaler`` so steps it
            skipped for inf/NaN gradients are not counted.
        verify_order: check during the first forward pass that the blocks run in the given
            order (raises ``ValueError`` at the first step if not).
        process_group: under ``torch.distributed``, the group whose ranks must take the same
            decisions. ``"auto"`` (default): the default group when one is initialised with
            more than one rank. At each interval end the ranks adopt rank 0's gradient
            statistics and then rank 0's decision (two broadcasts of a few numbers per
            interval), so they freeze the same blocks at the same step even when their local
            statistics differ in the last bits or the policy is not deterministic. ``None``:
            no synchronisation.
        anneal_steps: soft transition (needs ``attach=True``): when the policy decides to
            freeze, the blocks' updates first fade to zero over this many optimizer steps
            (:class:`~autofreeze_ext.freezing.soft_freeze.SoftFreeze`), then they freeze; decisions
            taken meanwhile wait. 0 (default): freeze at once.
    """

    max_depth: Optional[int] = None
    attach: bool = True
    grad_scaler: Any = None
    verify_order: bool = True
    process_group: Any = "auto"
    anneal_steps: int = 0

    @classmethod
    def split(cls, kwargs: dict, **fixed) -> Tuple["ControllerOptions", dict]:
        """``(options, rest)``: the options among ``kwargs`` (``fixed`` overriding them), and the
        other keyword arguments of :class:`FreezeController` (``blocks=``, ``embeddings=`` ...)."""
        known = cls.__dataclass_fields__
        options = cls(**{**{k: v for k, v in kwargs.items() if k in known}, **fixed})
        return options, {k: v for k, v in kwargs.items() if k not in known}


def _state_fits(policy, saved: dict) -> bool:
    """A policy state without its class name (written before it was recorded) has this policy's keys."""
    return set(policy.state_dict()) == set(saved)


class FreezeController:
    """Freezes a growing prefix of a model's blocks during training.

    Use it from a plain PyTorch loop: construct it after the optimizer; by default it hooks
    ``optimizer.step()`` and needs no further call (so gradient accumulation over
    micro-batches and steps skipped by ``GradScaler`` are handled: it counts real optimizer
    steps). With ``attach=False`` call :meth:`step` after each ``optimizer.step()``.

    Freezing block ``l`` (and the embeddings with block 0): ``requires_grad_(False)``; the
    modules switch to ``eval()`` and stay there (dropout off, so their output is deterministic
    and cacheable); their parameters leave the optimizer's param groups and their ``.grad``,
    optimizer state and gradient accumulators are freed. The optimizer state of parameters
    that stay active is untouched (no optimizer rebuild). The prefix only grows.

    Args:
        model: the model being trained.
        optimizer: its optimizer; must own every trainable parameter of the blocks.
        policy: a :class:`~autofreeze_ext.policies.FreezePolicy`; default
            :class:`~autofreeze_ext.policies.GradientNormTest` (the paper's test, which needs no
            knowledge of the run). The CLI's and the integrations' default, ``plateau``, reads a
            validation slice: ``make_policy("autofreeze", total_steps=N)`` builds it, and
            ``make_signals(policy.signals, probe_batch, val=held_out_rows)`` its signals.
        signals: extra per-block :class:`~autofreeze_ext.signals.Signal` objects measured
            each interval (e.g. ``ParameterDisplacement()``, ``ProbeDrift(probe_batch)``); a
            policy that reads a signal (its ``signals`` attribute) needs it here. Their values
            go to the policy (``IntervalStats.signals``) and to :attr:`history`.
        steps_per_epoch: optimizer steps per epoch (needed by ``intervals_per_epoch``).
        blocks, embeddings: explicit layout for models the adapters do not know.
        options: :class:`ControllerOptions` (how the controller hooks in, how deep it may
            freeze, rank agreement, soft transitions); default: ``ControllerOptions()``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, policy: Optional[FreezePolicy] = None,
                 *, signals: Optional[List[Signal]] = None, steps_per_epoch: Optional[int] = None,
                 blocks: ModuleOrList = None, embeddings: ModuleOrList = None,
                 options: Optional["ControllerOptions"] = None) -> None:
        o = options if options is not None else ControllerOptions()
        max_depth, attach, grad_scaler = o.max_depth, o.attach, o.grad_scaler
        verify_order, process_group, anneal_steps = o.verify_order, o.process_group, o.anneal_steps
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if steps_per_epoch is not None and (int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        self.model = model
        self.optimizer = optimizer
        self.policy = policy if policy is not None else GradientNormTest()
        self.layout: BlockLayout = resolve_layout(model, blocks=blocks, embeddings=embeddings)
        n = self.layout.num_blocks
        self.max_depth = n if max_depth is None else int(max_depth)
        if not 0 <= self.max_depth <= n:
            raise ValueError(f"max_depth must be in [0, {n}], got {max_depth!r}")
        self.steps_per_epoch = steps_per_epoch
        self.grad_scaler = grad_scaler
        self._check_optimizer_owns_params()
        self._sync = resolve_group(process_group)

        self._block_params: List[List[nn.Parameter]] = [
            [p for p in b.parameters() if p.requires_grad] for b in self.layout.blocks]
        self.stats: Optional[GradientStatistics] = None
        if self.policy.uses_gradient_stats:
            self.stats = GradientStatistics(self._block_params, norm=self.policy.norm)
        self.signals: List[Signal] = list(signals or [])
        self._check_signals()
        self.global_step = 0
        self.step_seconds = 0.0  #: time spent in step() (gradient statistics and decisions)
        #: step() times itself on this device's clock (on CUDA it waits for the queued work)
        self._clock_device = next(iter(model.parameters()), torch.empty(0)).device
        self.interval_steps = 0  #: optimizer steps in the running interval
        self.frozen_depth = 0
        self._epoch_clock: Optional[tuple] = None  # (epoch, its first global step, its steps): begin_epoch
        self.history: List[Dict] = []  #: one record per interval decision and per freeze
        self._listeners: List[FreezeListener] = []
        self._last_scale: Optional[float] = None
        self._last_step_at: Optional[float] = None  # wall clock of the previous counted step
        self._step_times: List[float] = []  # seconds between counted steps in the running interval
        self._order_seen: List[int] = []
        self._order_hooks = []
        if verify_order:
            for i, blk in enumerate(self.layout.blocks):
                self._order_hooks.append(blk.register_forward_pre_hook(self._make_order_hook(i)))
        self._step_hook = optimizer.register_step_post_hook(self._after_optimizer_step) if attach else None
        self.soft: Optional[SoftFreeze] = None
        self._pre_hook = None
        if anneal_steps:
            if not attach:
                raise ValueError("anneal_steps needs attach=True (the controller scales updates around opt.step())")
            self.soft = SoftFreeze(anneal_steps)
            self._pre_hook = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.soft.before_step())
        if grad_scaler is not None and attach:
            warnings.warn("grad_scaler= is only needed with attach=False: the optimizer hook already skips "
                          "steps that GradScaler skipped", stacklevel=2)

        depth = self.policy.initial_depth(n)
        if depth:
            self.freeze_to(depth, reason="initial")
        for sig in self.signals:
            sig.bind(self)

    # ------------------------------------------------------------------ public API
    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    def add_freeze_listener(self, fn: FreezeListener) -> None:
        """Call ``fn(old_depth, new_depth)`` after each freeze (e.g. to invalidate caches)."""
        self._listeners.append(fn)

    def step(self) -> int:
        """Account one optimizer step; at interval ends, consult the policy and freeze.

        Returns the frozen depth after the step.
        """
        if self._skip_for_scaler():
            return self.frozen_depth
        t0 = now(self._clock_device)  # the step boundary (a speed budget reads these intervals)
        if self._last_step_at is not None:
            self._step_times.append(t0 - self._last_step_at)
        self._last_step_at = t0
        try:
            return self._step()
        finally:
            self.step_seconds += now(self._clock_device) - t0

    def _step(self) -> int:
        self.global_step += 1
        self.interval_steps += 1
        if self.soft is not None and self.soft.active:
            target = self.soft.after_step()
            if target is not None:
                self.freeze_to(target, reason=f"annealed over {self.soft.steps} steps")
        if self._order_hooks:
            self._verify_order()
        end = self.policy.is_interval_end(self._policy_step(), self.steps_per_epoch)
        active = range(self.frozen_depth, self.num_blocks)
        norms = None
        if self.stats is not None:
            raw = self.stats.accumulate(active, finish=end)
            if end:
                norms = [None if b < self.frozen_depth else v / self.interval_steps for b, v in enumerate(raw)]
        for sig in self.signals:
            t0 = time.perf_counter()
            sig.after_step(self.interval_steps)
            sig.seconds += time.perf_counter() - t0
        if end and self._sync is not None:
            norms = self._sync.norms(norms, self.num_blocks) if self.stats is not None else None
        if end:
            self._end_interval(norms, self._signal_values(active))
            self.interval_steps = 0
            self._step_times = []
        return self.frozen_depth

    def _signal_values(self, active) -> Dict[str, List[Optional[float]]]:
        # a signal the policy reads but does not need now is skipped (None); the same on every
        # rank, whose policies see the same broadcast statistics. Extra signals always run.
        skip = set(self.policy.signals) - set(self.policy.signals_needed())
        values = {}
        for sig in self.signals:
            if sig.name in skip:
                values[sig.name] = None
                continue
            t0 = time.perf_counter()
            v = sig.interval_end(active)
            if self._sync is not None:
                v = self._sync.signal(v, sig.per_block, self.num_blocks)
            values[sig.name] = v
            sig.seconds += time.perf_counter() - t0
        return values

    def begin_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        """Tell the controller that epoch ``epoch`` (from 0) has ``steps`` optimizer steps, of
        which ``done`` have run. Needed only when the steps per epoch change during training
        (e.g. the batch grows): per-epoch evaluation intervals then tile each epoch by its own
        length and ``epoch`` in the history stays exact. Without it epochs are
        ``global_step // steps_per_epoch``. Idempotent; call it again after a resume."""
        if int(steps) != steps or steps < 1 or epoch < 0 or not 0 <= done <= steps:
            raise ValueError(f"begin_epoch: need epoch >= 0, steps >= 1 and 0 <= done <= steps, "
                             f"got {epoch}, {steps}, {done}")
        self.steps_per_epoch = int(steps)
        self._epoch_clock = (int(epoch), self.global_step - int(done), int(steps))

    def freeze_to(self, depth: int, reason: str = "manual") -> None:
        """Freeze the first ``depth`` blocks (and the embeddings). Never unfreezes."""
        depth = int(depth)
        if not 0 <= depth <= self.num_blocks:
            raise ValueError(f"depth must be in [0, {self.num_blocks}], got {depth}")
        old = self.frozen_depth
        if depth <= old:
            return
        modules: List[nn.Module] = list(self.layout.blocks[old:depth])
        if old == 0:
            modules = list(self.layout.embeddings) + modules
        params = [p for m in modules for p in m.parameters()]
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        self._remove_from_optimizer(params)
        for m in modules:
            m.eval()
            if not getattr(m, "_autofreeze_eval_hook", False):
                m.register_forward_pre_hook(_keep_eval)
                m._autofreeze_eval_hook = True
        for b in range(old, depth):
            if self.stats is not None:
                self.stats.release(b)
            for sig in self.signals:
                sig.release(b)
        self.frozen_depth = depth
        self.history.append({"event": "freeze", "step": self.global_step, "epoch": self._epoch(),
                             "from": old, "to": depth, "reason": reason})
        log.info("autofreeze: step %d: froze blocks %d..%d (%s); %d of %d frozen",
                 self.global_step, old, depth - 1, reason, depth, self.num_blocks)
        for fn in self._listeners:
            fn(old, depth)

    def drop_frozen_from_optimizer(self) -> None:
        """Take the frozen parameters (and any state of theirs) out of the optimizer again: after
        an optimizer state saved with them in their groups was loaded into it (a framework's resume)."""
        self._remove_from_optimizer(self.frozen_parameters())

    def frozen_parameters(self) -> List[nn.Parameter]:
        mods = (list(self.layout.embeddings) if self.frozen_depth else []) + list(self.layout.blocks[:self.frozen_depth])
        return [p for m in mods for p in m.parameters()]

    def detach(self) -> None:
        """Remove the optimizer hook (the model stays as it is)."""
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        if self._pre_hook is not None:
            self._pre_hook.remove()
            self._pre_hook = None
        self._remove_order_hooks()

    def state_dict(self) -> dict:
        """Frozen depth, counters, policy state and accumulators: enough for a resumed run to
        take the same decisions. Load it *before* the optimizer's own state dict."""
        return {"version": 1, "global_step": self.global_step, "interval_steps": self.interval_steps,
                "frozen_depth": self.frozen_depth,
                "num_blocks": self.num_blocks, "policy": self.policy.state_dict(),
                "policy_class": type(self.policy).__name__,
                "stats": self.stats.state_dict() if self.stats is not None else None,
                "signals": {sig.name: sig.state_dict() for sig in self.signals},
                # a resumed run's report then counts the signals' time over the whole run
                "signal_seconds": {sig.name: sig.seconds for sig in self.signals},
                "soft": self.soft.state_dict() if self.soft is not None else None,
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unknown FreezeController state version {state.get('version')!r}")
        if state["num_blocks"] != self.num_blocks:
            raise ValueError(f"state is for {state['num_blocks']} blocks, this model has {self.num_blocks}")
        if state["frozen_depth"] < self.frozen_depth:
            raise ValueError(f"state has {state['frozen_depth']} frozen blocks but {self.frozen_depth} are frozen "
                             "already; freezing cannot be undone")
        self._check_policy(state)
        self.freeze_to(state["frozen_depth"], reason="resume")
        self.global_step = int(state["global_step"])
        self.interval_steps = int(state["interval_steps"])
        self.policy.load_state_dict(state["policy"])
        if self.stats is not None and state.get("stats") is not None:
            self.stats.load_state_dict(state["stats"])
        saved = state.get("signals") or {}
        seconds = state.get("signal_seconds") or {}
        for sig in self.signals:
            if sig.name in saved:
                sig.load_state_dict(saved[sig.name])
            sig.seconds = float(seconds.get(sig.name, 0.0))
        self.history = list(state["history"])
        soft = state.get("soft")
        if self.soft is not None and soft and soft.get("target") is not None:
            t = int(soft["target"])
            self.soft.start([p for b in range(self.frozen_depth, t) for p in self._block_params[b]], t, soft["done"])
        self._remove_order_hooks()

    def _check_policy(self, state: dict) -> None:
        """The state was written by this run's kind of policy (a state written under another one,
        e.g. the default before it changed from ``late`` to ``plateau``, is refused, not misread)."""
        mine = type(self.policy).__name__
        saved = state.get("policy_class")
        fits = saved == mine if saved is not None else _state_fits(self.policy, state["policy"])
        if not fits:
            raise ValueError(f"the checkpoint's freezing policy was {saved or 'another policy'}, this run's is {mine}: "
                             "resume under the policy that wrote it (--policy / policy=; the default policy changed "
                             "from 'late' to 'plateau')")

    # ------------------------------------------------------------------ internals
    def _policy_step(self) -> int:
        """The step as a policy sees it: with :meth:`begin_epoch`, numbered as if every epoch
        had the running epoch's length (so ``(step - 1) % steps_per_epoch`` is the position in
        the epoch); otherwise the global step."""
        if self._epoch_clock is None:
            return self.global_step
        epoch, first, steps = self._epoch_clock
        return epoch * steps + self.global_step - first

    def _epoch(self) -> float:
        if self._epoch_clock is not None:
            epoch, first, steps = self._epoch_clock
            return epoch + (self.global_step - first) / steps
        return self.global_step / self.steps_per_epoch if self.steps_per_epoch else math.nan

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        # GradScaler does not call step() for an update it skips, except on optimizers that skip
        # it themselves (fused Adam/AdamW: _step_supports_amp_scaling); it then hands them a
        # found_inf tensor, non-zero when this update was skipped.
        found_inf = getattr(optimizer, "found_inf", None)
        if getattr(optimizer, "_step_supports_amp_scaling", False) and isinstance(found_inf, torch.Tensor) \
                and bool(found_inf.item()):
            return
        self.step()

    def _skip_for_scaler(self) -> bool:
        if self.grad_scaler is None or self._step_hook is not None or not self.grad_scaler.is_enabled():
            return False
        scale = float(self.grad_scaler.get_scale())
        skipped = self._last_scale is not None and scale < self._last_scale
        self._last_scale = scale
        return skipped

    def _end_interval(self, norms: Optional[List[Optional[float]]],
                      signals: Optional[Dict[str, List[Optional[float]]]] = None) -> None:
        info = IntervalStats(step=self.global_step, epoch=self._epoch(), frozen_depth=self.frozen_depth,
                             num_blocks=self.num_blocks, max_depth=self.max_depth,
                             interval_steps=self.interval_steps, norms=norms, signals=signals or {},
                             step_seconds=statistics.median(self._step_times) if self._step_times else None)
        if norms is not None and not all(math.isfinite(v) for v in norms if v is not None):
            warnings.warn(f"autofreeze: non-finite gradient statistics in the interval ending at step "
                          f"{self.global_step}; interval skipped, the next one sets a new baseline", RuntimeWarning)
            self.policy.on_invalid_interval(info)
            self.history.append({"event": "skipped", "step": self.global_step, "epoch": self._epoch()})
            return
        depth = min(int(self.policy.decide(info)), self.max_depth)
        if self._sync is not None:
            depth = self._sync.value(depth)
        entry = interval_entry(info, depth, signals, self.policy.last)
        self.history.append(entry)
        line = describe(entry)
        if line:
            log.info("%s", line)
        if depth > self.frozen_depth:
            self._freeze_or_anneal(depth)

    def _freeze_or_anneal(self, depth: int) -> None:
        if self.soft is None:
            self.freeze_to(depth, reason=self.policy.describe())
        elif not self.soft.active:
            self.soft.start([p for b in range(self.frozen_depth, depth) for p in self._block_params[b]], depth)
            self.history.append({"event": "anneal", "step": self.global_step, "epoch": self._epoch(),
                                 "from": self.frozen_depth, "to": depth, "steps": self.soft.steps})

    def _check_signals(self) -> None:
        have = {sig.name for sig in self.signals}
        missing = [name for name in self.policy.signals if name not in have]
        if missing:
            raise ValueError(f"{self.policy.describe()} reads the signal(s) {missing}: pass them to the controller, "
                             f"e.g. FreezeController(..., signals=[ParameterDisplacement(), ProbeDrift(probe_batch)])")

    def _check_optimizer_owns_params(self) -> None:
        owned = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        for i, m in enumerate([*self.layout.embeddings, *self.layout.blocks]):
            for name, p in m.named_parameters():
                if p.requires_grad and id(p) not in owned:
                    where = f"embeddings[{i}]" if i < len(self.layout.embeddings) else \
                        f"blocks[{i - len(self.layout.embeddings)}]"
                    raise ValueError(f"the optimizer does not own parameter {where}.{name} "
                                     f"(shape {tuple(p.shape)}): build the optimizer from model.parameters() "
                                     "before creating the FreezeController")

    def _remove_from_optimizer(self, params: List[nn.Parameter]) -> None:
        ids = {id(p) for p in params}
        for group in self.optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        for p in params:
            self.optimizer.state.pop(p, None)

    def _make_order_hook(self, i: int):
        def hook(module, args):
            self._order_seen.append(i)
        return hook

    def _verify_order(self) -> None:
        seen = list(dict.fromkeys(self._order_seen))  # first call of each block
        self._remove_order_hooks()
        if not seen:
            return
        if seen != sorted(seen):
            raise ValueError(f"the blocks ran in the order {seen} during the first forward pass, but were given "
                             f"as 0..{self.num_blocks - 1}: pass them in forward order")
        if len(seen) < self.num_blocks:
            warnings.warn(f"blocks {sorted(set(range(self.num_blocks)) - set(seen))} did not run in the first "
                          "forward pass", RuntimeWarning)

    def _remove_order_hooks(self) -> None:
        for h in self._order_hooks:
            h.remove()
        self._order_hooks = []
        self._order_seen = []
