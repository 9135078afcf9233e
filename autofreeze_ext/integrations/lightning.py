"""Adaptive freezing for an unchanged Lightning ``LightningModule``: one callback.

Usage::

    from autofreeze_ext.integrations.lightning import AutoFreezeLightning
    trainer = lightning.Trainer(max_epochs=3, callbacks=[AutoFreezeLightning()])
    trainer.fit(module, train_loader)

When fitting starts the callback finds the model's blocks (a Hugging Face BERT-family model
anywhere inside the module, or ``blocks=`` / ``embeddings=``), builds a
:class:`~autofreeze_ext.FreezeController` on the trainer's optimizer and hooks its ``step()``:
one controller step per optimizer update (``accumulate_grad_batches`` counted once), none for an
update the precision plugin's ``GradScaler`` skipped (``"16-mixed"``: ``step()`` is not called
then). Frozen parameters leave the optimizer (the others keep their Adam state; the LR
scheduler's groups stay) and, under ``strategy="ddp"``, the all-reduce: the strategy's
``DistributedDataParallel`` is rebuilt over the parameters that still train. The controller's
state is the callback's state in Lightning checkpoints, and ``trainer.fit(ckpt_path=...)``
resumes with the same frozen depth and decisions. The activation cache (``cache=True``):
:func:`cached_forward` in ``training_step``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import uuid
from typing import Optional, Union

import torch

from ..batching import first_rows
from ..cache.activation_cache import DEFAULT_MEMORY, ActivationCache, CacheInUse, add_counts
from ..freezing.adapters import hf_layout
from ..freezing.controller import ControllerOptions, FreezeController
from ..freezing.prefix import FrozenPrefixRunner
from ..policies import FreezePolicy, PolicyOptions, make_policy
from ..policies.registry import check_spec
from ..signals import NEEDS_PROBE, PROBE_SAMPLES, make_signals
from ._optional import optional_base

log = logging.getLogger("autofreeze_ext")

# lightning is optional: using this module without it explains how to install it
Callback, _ERROR = optional_base("lightning.pytorch.callbacks", "Callback", "lightning")


class AutoFreezeLightning(Callback):  # type: ignore[misc,valid-type]
    """A ``lightning.pytorch.Callback`` that freezes the blocks that stopped learning.

    Args:
        policy: a :class:`~autofreeze_ext.FreezePolicy`, a policy name from
            :data:`~autofreeze_ext.policies.POLICIES` or a mode string (``"static:half"``,
            ``"autofreeze"``; see :func:`~autofreeze_ext.policies.make_policy`), built when fitting
            starts with the trainer's ``estimated_stepping_batches`` as the run's total steps
            (default: :data:`~autofreeze_ext.policies.DEFAULT_POLICY`, ``plateau``, which reads
            ``val_data``; without it the default falls back to
            :data:`~autofreeze_ext.policies.NO_VAL_DEFAULT`, ``late``, with a warning).
        options: :class:`~autofreeze_ext.policies.PolicyOptions` for a policy given by name.
        probe_samples: training rows in the probe batch of the probe signals a policy reads
            (the first rows of the train dataloader's dataset, collated by its ``collate_fn``).
        val_data: rows never trained on, the validation slice of a policy that reads one
            (``"plateau"``): a dict of tensors (``input_ids``, ``attention_mask``, ``labels`` ...).
        cache: keep the frozen prefix's output per row for :func:`cached_forward` (default
            False: the whole forward pass runs). Each fit caches afresh (its own fingerprint:
            a disk tier an earlier fit left is never read); under DDP each rank in its own folder.
        cache_dir: the cache's disk tier (default: RAM tier only); cache_memory: its RAM budget;
        cost_model: cache a depth only where reading beats recomputing.
        **controller_kwargs: ``blocks=``, ``embeddings=`` for :class:`~autofreeze_ext.FreezeController`,
            and the fields of :class:`~autofreeze_ext.freezing.controller.ControllerOptions`.

    After fitting starts, :attr:`controller` is the live controller; after it ends,
    :attr:`cache_counters` the cache's counts over the whole fit (a resumed fit's: the fits
    before it included, kept in the checkpoint). A policy that judges training converged
    (``"plateau"`` with ``stop_when_converged``) stops the trainer.
    """

    def __init__(self, policy: Union[FreezePolicy, str, None] = None, options: Optional[PolicyOptions] = None,
                 probe_samples: int = PROBE_SAMPLES, val_data: Optional[dict] = None, cache: bool = False,
                 cache_dir: Optional[str] = None, cache_memory: str = DEFAULT_MEMORY, cost_model: bool = True,
                 **controller_kwargs) -> None:
        if _ERROR:
            raise ImportError(_ERROR)
        if isinstance(policy, str):
            policy = check_spec(policy)  # a policy name or a mode string, or a clear error now
            cache = cache or policy.endswith("+cache")  # a "+cache" mode asks for the cache
        self.policy = policy if policy is not None else ("autofreeze+cache" if cache else "autofreeze")  # the default
        self.options, self.probe_samples, self.val_data = options, probe_samples, val_data
        self.use_cache, self.cost_model = cache, cost_model
        self.cache_options = {"path": cache_dir, "memory_budget": cache_memory}
        self.cache: Optional[ActivationCache] = None
        self.cache_counters: dict = {}  #: the cache's counts when the fit ended, a resumed fit's all of them
        self._counts_before: Optional[dict] = None  # what the checkpoint resumed from counted
        self.controller_kwargs = controller_kwargs
        self.controller: Optional[FreezeController] = None
        self.runner: Optional[FrozenPrefixRunner] = None
        self._pending: Optional[dict] = None  # the checkpoint's controller state, until fitting starts
        self._groups: Optional[list] = None  # the optimizer's parameter groups as configure_optimizers built them
        self._ddp_depth = 0
        self._run_length: tuple = (None, None)  # (optimizer steps of the fit, steps per epoch)

    # ------------------------------------------------------------------ fitting
    def on_fit_start(self, trainer, pl_module) -> None:
        model = _frozen_model(pl_module, self.controller_kwargs)
        optimizer = _raw_optimizer(trainer)
        self._groups = [list(g["params"]) for g in optimizer.param_groups]
        total, per_epoch = _run_length(trainer)
        self._run_length = (total, per_epoch)
        policy = self._policy(trainer, model, total)
        probe = _probe(trainer, model, self.probe_samples) if set(policy.signals) & set(NEEDS_PROBE) else None
        val = self._val() if policy.reads_val_slice else None
        opts, rest = ControllerOptions.split(self.controller_kwargs, attach=True)
        self.controller = FreezeController(model, optimizer, policy, steps_per_epoch=per_epoch,
                                           signals=make_signals(policy.signals, probe, val=val), options=opts, **rest)
        if self._pending is not None:  # resuming: Lightning loads the checkpoint's optimizer state
            _restore_groups(optimizer, self._groups)  # (saved in this layout) after this hook
        if self.use_cache:
            # Lightning saves rank 0's callback state and loads it on every rank: only rank 0 adds it
            self._counts_before = (self._pending or {}).get("cache_counts") if trainer.global_rank == 0 else None
            self.cache = _fresh_cache(self.cache_options, trainer, next(model.parameters()).device)
            self.runner = FrozenPrefixRunner(model, self.controller, self.cache, cost_model=self.cost_model)
        self._ddp_depth = 0

    def on_train_start(self, trainer, pl_module) -> None:
        """Resuming: the checkpoint's frozen depth and decisions, applied once Lightning has
        loaded the optimizer's state (after ``on_fit_start``) into the full optimizer."""
        if self._pending is not None and self.controller is not None:
            saved, now = self._pending.get("policy"), self.controller.policy.describe()
            if saved is not None and saved != now:
                raise ValueError(f"AutoFreezeLightning: the checkpoint was written by policy {saved!r}, this fit runs "
                                 f"{now!r}: resume with the same policy, or fit without ckpt_path")
            self.controller.load_state_dict(self._pending["controller"])
            self.controller.drop_frozen_from_optimizer()  # loaded in the full layout: out again
            self._pending = None
            log.info("AutoFreezeLightning: resumed with %d frozen blocks", self.controller.frozen_depth)

    def _policy(self, trainer, model, total: Optional[int]) -> FreezePolicy:
        if not isinstance(self.policy, str):
            return self.policy
        o = dataclasses.replace(self.options) if self.options is not None else PolicyOptions()
        o.total_steps = o.total_steps or total or None
        if o.warmup_steps == 0:  # the warm-up guard: the schedule's own warm-up when it says it
            o.warmup_steps = _warmup_steps(trainer)
        o.cached = self.use_cache
        n = len(_layout(model, self.controller_kwargs).blocks)
        return make_policy(self.policy, options=o, num_blocks=n, has_val_rows=self.val_data is not None)

    def _val(self) -> dict:
        if not self.val_data or "labels" not in self.val_data:
            raise ValueError("AutoFreezeLightning: this policy reads a validation slice: pass val_data={'input_ids': "
                             "..., 'attention_mask': ..., 'labels': ...}, rows never trained on")
        return {k: v.cpu() for k, v in self.val_data.items() if isinstance(v, torch.Tensor)}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.runner is not None:  # the last epoch's rows are never read back: nothing is written
            self.runner.later_passes = not _last_epoch(trainer, *self._run_length)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """Under DDP, after a freeze: rebuild the strategy's DDP over the parameters that still
        train (the frozen ones leave the all-reduce); every rank freezes at the same step."""
        depth = self.controller.frozen_depth if self.controller is not None else 0
        if depth != self._ddp_depth:
            self._ddp_depth = depth
            _rebuild_ddp(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.controller is not None and self.controller.policy.should_stop():
            trainer.should_stop = True

    def _cache_totals(self) -> Optional[dict]:
        """The cache's counts and the rows left unwritten so far, the fits' before a resume included
        (after the fit: its final counts, so that a checkpoint saved then keeps them too)."""
        if self.runner is None:
            return dict(self.cache_counters) or None
        return add_counts(self._counts_before, self.runner.counters())

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.runner is not None:
            self.cache_counters = self._cache_totals()
            self.runner.close()
            self.cache.close()
            self.runner = None
        if self.controller is not None:
            self.controller.detach()  # the optimizer may outlive this fit
            log.info("AutoFreezeLightning: %d of %d blocks frozen at the end", self.controller.frozen_depth,
                     self.controller.num_blocks)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A failed fit leaves no hook on the optimizer and no open cache behind."""
        self.on_fit_end(trainer, pl_module)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        if self.controller is not None:
            return {"controller": self.controller.state_dict(), "policy": self.controller.policy.describe(),
                    "cache_counts": self._cache_totals()}
        return dict(self._pending or {})

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = dict(state_dict) if state_dict.get("controller") is not None else None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """The optimizer's state in the layout ``configure_optimizers`` builds (frozen parameters
        back in their groups, without state), so a resumed fit loads it into a fresh optimizer;
        the controller then removes the frozen parameters again."""
        if self._groups is None or not checkpoint.get("optimizer_states"):
            return
        try:
            checkpoint["optimizer_states"][0] = full_layout(checkpoint["optimizer_states"][0],
                                                            _raw_optimizer(trainer), self._groups)
        except LayoutChanged as exc:  # saved as it is: it loads only into an optimizer laid out as now
            log.warning("AutoFreezeLightning: %s; the optimizer state is saved as it is", exc)


class LayoutChanged(ValueError):
    """The optimizer no longer has the groups ``configure_optimizers`` built."""


def full_layout(saved: dict, optimizer: torch.optim.Optimizer, groups: list) -> dict:
    """``saved`` (the optimizer's ``state_dict()`` now, its frozen parameters removed) re-indexed
    as if every parameter of ``groups`` (the original groups) were still in it."""
    now = [p for g in optimizer.param_groups for p in g["params"]]
    original = {id(p): k for k, p in enumerate(q for g in groups for q in g)}
    if len(saved["param_groups"]) != len(groups) or any(id(p) not in original for p in now):
        raise LayoutChanged("the optimizer's parameter groups changed since fitting started (a group added?)")
    state = {original[id(now[i])]: v for i, v in saved["state"].items()}
    param_groups = [{**g, "params": [original[id(p)] for p in groups[k]]} for k, g in enumerate(saved["param_groups"])]
    return {"state": state, "param_groups": param_groups}


def _restore_groups(optimizer: torch.optim.Optimizer, groups: list) -> None:
    """Every parameter back in its ``configure_optimizers`` group (a policy that freezes from the
    start took some out), so that the checkpoint's optimizer state, saved in that layout, loads."""
    for group, params in zip(optimizer.param_groups, groups):
        group["params"] = list(params)


class IndexedRows(torch.utils.data.Dataset):
    """``dataset``'s rows (dicts) with their position in it under ``"index"``: the key
    :func:`cached_forward` caches each row under (``DataLoader(IndexedRows(ds), ...)``)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        row = self.dataset[i]
        if not isinstance(row, dict):
            raise TypeError(f"IndexedRows: rows must be dicts of model inputs, row {i} is a {type(row).__name__}")
        return {**row, "index": i}


def cached_forward(module, indices, **batch):
    """The forward pass of ``module``'s model through the frozen-prefix cache of its
    :class:`AutoFreezeLightning` callback, for ``training_step``::

        out = cached_forward(self, batch.pop("index"), **batch)   # instead of self.model(**batch)

    ``indices``: each row's position in the training set (the cache's key; :class:`IndexedRows`
    adds it to a dataset's rows). Without a cache (or outside fitting) it is the model's plain
    forward pass. The model is the Hugging Face model found inside ``module``; with ``blocks=``
    it is ``module`` itself, whose ``forward(**batch)`` must then run the model."""
    trainer = getattr(module, "_trainer", None)
    cb = next((c for c in (trainer.callbacks if trainer is not None else []) if isinstance(c, AutoFreezeLightning)),
              None)
    if cb is None or cb.runner is None or not module.training:
        return _frozen_model(module, cb.controller_kwargs if cb else {})(**batch)
    return cb.runner(indices.tolist() if isinstance(indices, torch.Tensor) else list(indices), **batch)


# ---------------------------------------------------------------------- helpers
def _layout(model, kw: dict):
    from ..freezing.adapters import resolve_layout

    return resolve_layout(model, blocks=kw.get("blocks"), embeddings=kw.get("embeddings"))


def _frozen_model(pl_module, kw: dict) -> torch.nn.Module:
    """What the controller freezes: the module itself with ``blocks=``, else the first Hugging
    Face BERT-family model inside it."""
    if kw.get("blocks") is not None:
        return pl_module
    found = next((m for m in pl_module.modules() if hf_layout(m) is not None), None)
    if found is None:
        raise ValueError(f"AutoFreezeLightning: no Hugging Face BERT-family model inside {type(pl_module).__name__}: "
                         "pass blocks=[...] (in forward order) and embeddings=[...]")
    return found


def _raw_optimizer(trainer) -> torch.optim.Optimizer:
    if len(trainer.optimizers) != 1:
        raise ValueError(f"AutoFreezeLightning supports one optimizer, configure_optimizers gave "
                         f"{len(trainer.optimizers)}")
    opt = trainer.optimizers[0]
    return getattr(opt, "optimizer", opt)  # a LightningOptimizer wraps the torch optimizer


def _probe(trainer, model, n: int) -> dict:
    loader = trainer.train_dataloader
    if loader is None or not hasattr(loader, "dataset"):
        raise RuntimeError("AutoFreezeLightning: this policy reads probe signals and needs a map-style training set")
    return first_rows(loader, n, next(model.parameters()).device, skip=("index",))


def _fresh_cache(options: dict, trainer, device) -> ActivationCache:
    """This fit's cache: a new fingerprint (nothing an earlier fit wrote is read), one folder
    per rank; a folder another live fit holds makes this one take a folder of its own."""
    run = uuid.uuid4().hex
    if trainer.world_size > 1:  # the same id on every rank is not needed: each rank has its own folder
        options = {**options, "path": os.path.join(options["path"], f"rank{trainer.global_rank}")} \
            if options["path"] else options
    try:
        return ActivationCache(device=device, fingerprint={"lightning_run": run}, **options)
    except CacheInUse as exc:
        options = {**options, "path": os.path.join(options["path"], f"run-{run}")}
        log.warning("%s; this fit caches in %s instead", exc, options["path"])
        return ActivationCache(device=device, fingerprint={"lightning_run": run}, **options)


def _run_length(trainer) -> tuple:
    """(optimizer steps of the fit, steps per epoch): None where the trainer cannot say (an
    iterable dataset without a length, an unbounded fit)."""
    if trainer.train_dataloader is None:  # estimated_stepping_batches skips this under max_steps alone
        trainer.fit_loop.setup_data()
    total = trainer.estimated_stepping_batches
    total = int(total) if math.isfinite(total) and total > 0 else None
    batches = trainer.num_training_batches
    per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None
    return total, per_epoch


def _last_epoch(trainer, total: Optional[int], per_epoch: Optional[int]) -> bool:
    """Whether the epoch starting is the fit's last: ``max_epochs`` ends it, or the fit's steps
    (``max_steps``, which Lightning counts in ``estimated_stepping_batches``) run out in it."""
    if trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1:
        return True
    return bool(total and per_epoch) and (trainer.current_epoch + 1) * per_epoch >= total


def _warmup_steps(trainer) -> int:
    """The LR warm-up of the fit's schedule when it says it (the ``transformers`` schedules keep
    ``num_warmup_steps``), else 0: no freeze before it ends (the policies' warm-up guard)."""
    for config in trainer.lr_scheduler_configs:
        for fn in getattr(config.scheduler, "lr_lambdas", []):
            steps = getattr(fn, "keywords", {}).get("num_warmup_steps")
            if steps is not None:
                return int(steps)
    return 0


def _rebuild_ddp(trainer) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, torch.nn.parallel.DistributedDataParallel):
        strategy.model = strategy._setup_model(strategy.model.module)  # as DDPStrategy.configure_ddp does
        strategy._register_ddp_hooks()  # the strategy's communication hook (ddp_comm_hook=...) again
