"""``AutoFreezeTrainer``: a Hugging Face ``Trainer`` that freezes *and* caches the frozen prefix.

Usage (the same arguments as ``Trainer`` plus the freezing and cache options)::

    from autofreeze_ext.integrations.hf_trainer import AutoFreezeTrainer
    trainer = AutoFreezeTrainer(model=model, args=args, train_dataset=ds, policy="gradient+guards",
                                cache_dir="/scratch/af_cache")
    trainer.train()

What it adds to :class:`~autofreeze_ext.integrations.hf_callback.AutoFreezeCallback` (which it installs): each training
row carries its index (``sample_index``, kept through the Trainer's column filter), and the
training forward pass goes through a :class:`~autofreeze_ext.FrozenPrefixRunner` over an
:class:`~autofreeze_ext.ActivationCache`, so once blocks freeze, later epochs read their output
instead of recomputing it. Evaluation and prediction run the whole model unchanged. Rows are
cached without their padding, so any collator that pads per batch (``DataCollatorWithPadding``,
the Trainer's default once it has the tokenizer) and length-grouped batches (``group_by_length``,
in transformers 5 ``train_sampling_strategy="group_by_length"``) work. Gradient
accumulation works (the runner serves each micro-batch); ``train(resume_from_checkpoint=...)``
re-freezes the checkpoint's frozen prefix itself (the cache refills).
Under ``torchrun``/``accelerate`` with several processes each rank keeps a fixed shard of the
training rows (:class:`~autofreeze_ext.integrations.hf_ddp.RankStableSampler`) and its own cache
(``cache_dir/rankR``); the cached forward bypasses the DDP wrapper, so the trainer averages the
active parameters' gradients itself once per update, before clipping
(:func:`~autofreeze_ext.integrations.hf_ddp.all_reduce_gradients`): the same average DDP computes, with no
communication for frozen blocks.
"""
from __future__ import annotations

import logging
import math
import os
import uuid
from typing import Optional, Union

import torch

from ..cache.activation_cache import DEFAULT_MEMORY, ActivationCache, CacheInUse, add_counts
from ..freezing.prefix import FrozenPrefixRunner
from ..policies import FreezePolicy, PolicyOptions
from .hf_cache_counts import CacheCounts
from .hf_callback import AutoFreezeCallback
from .hf_ddp import RankStableSampler, SamplerEpoch, all_reduce_gradients, check_cached_setup

try:
    from transformers import Trainer
except ImportError:  # transformers is optional
    Trainer = object  # type: ignore[misc,assignment]

INDEX = "sample_index"
logger = logging.getLogger("autofreeze_ext")


def groups_by_length(args) -> bool:
    """Whether the Trainer's arguments ask for length-grouped batches: ``group_by_length=True``
    (transformers 4) or ``train_sampling_strategy="group_by_length"`` (transformers 5)."""
    return bool(getattr(args, "group_by_length", False)) or \
        getattr(args, "train_sampling_strategy", None) == "group_by_length"


class IndexedRows(torch.utils.data.Dataset):
    """A map-style dataset of dicts whose rows also carry their index under ``sample_index``."""

    def __init__(self, rows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.rows[i], INDEX: i}


class _ThroughRunner:
    """Stands in for the model inside ``Trainer.compute_loss``: calling it runs the runner."""

    def __init__(self, runner: FrozenPrefixRunner, indices, model) -> None:
        self.runner, self.indices, self.model = runner, indices, model

    def __call__(self, **inputs):
        return self.runner(self.indices, **inputs)

    def __getattr__(self, name):
        return getattr(self.model, name)


class Rows(torch.utils.data.Dataset):
    """The rows ``indices`` of a map-style dataset."""

    def __init__(self, rows, indices) -> None:
        self.rows, self.indices = rows, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.rows[self.indices[i]]


def hold_out_rows(rows, fraction: float, seed: int = 0):
    """``(training rows, validation rows)`` of a map-style dataset of dicts with a ``label`` or
    ``labels``: the CLI's stratified slice (:func:`~autofreeze_ext.tasks.split.split_rows`)."""
    from ..tasks.split import split_rows

    key = next((k for k in ("labels", "label") if len(rows) and k in rows[0]), None)
    if key is None and len(rows):
        raise ValueError("AutoFreezeTrainer: the validation slice is stratified by label: train_dataset rows need a "
                         "'label' or 'labels' (or pass val_data=)")
    labels = [rows[i][key] for i in range(len(rows))]
    # float targets are regression (STS-B's 3.0 too), as transformers reads them; ints are classes
    regression = any(isinstance(y, float) or (isinstance(y, torch.Tensor) and y.is_floating_point()) for y in labels)
    keep, val = split_rows(labels, fraction, seed, regression, "AutoFreezeTrainer: train_dataset")
    return Rows(rows, keep), Rows(rows, val)


def _reads_val_slice(policy) -> bool:
    """The callback's policy (None: the default; a name or mode string; an object) reads a slice."""
    from ..policies import reads_val_slice

    if policy is None or isinstance(policy, str):
        return reads_val_slice(policy)
    return isinstance(policy, FreezePolicy) and policy.reads_val_slice


def _seed(kwargs) -> int:
    args = kwargs.get("args")
    return int(getattr(args, "seed", 0) or 0)


def _hold_out(kwargs: dict, policy, fraction: float):
    """The validation slice held out of ``kwargs["train_dataset"]`` (which loses those rows);
    None for a streamed dataset under the default policy (it then falls back to one that reads
    no slice); a ``TypeError`` for a stream under a policy named to read one."""
    train = kwargs["train_dataset"]
    if isinstance(train, torch.utils.data.IterableDataset) or not hasattr(train, "__len__"):
        if policy is not None:
            raise TypeError("AutoFreezeTrainer: a policy that reads a validation slice holds it out of a map-style "
                            "train_dataset; this one is a stream: pass val_data=rows never trained on")
        logger.warning("AutoFreezeTrainer: no validation slice can be held out of a streamed train_dataset")
        return None
    kwargs["train_dataset"], val = hold_out_rows(train, fraction, seed=_seed(kwargs))
    logger.info("AutoFreezeTrainer: %d training rows held out as the validation slice", len(val))
    return val


class AutoFreezeTrainer(Trainer):  # type: ignore[misc,valid-type]
    """A ``transformers.Trainer`` with AutoFreeze's freezing and activation cache.

    Args:
        policy, options: the freezing policy (as :class:`~autofreeze_ext.integrations.hf_callback.AutoFreezeCallback`).
        cache: cache the frozen prefix's outputs (default True; False: freezing only).
        cache_dir: folder of the cache's disk tier (default: RAM tier only).
        cache_memory, cache_disk: budgets, e.g. ``"2GiB"``.
        cost_model: cache only at depths where reading beats recomputing (default True).
        val_data: the validation slice of a policy that reads one (``"plateau"``): rows never
            trained on. Default: ``val_fraction`` of ``train_dataset`` held out (stratified by
            its ``label``/``labels``) and removed from the rows the Trainer trains on; never the
            ``eval_dataset`` by default, since that is usually the set a run reports (freezing
            decided on it would be tuned on the reported score); pass ``val_data=eval_dataset``
            where it is a validation set of its own.
        val_fraction: the share held out when ``val_data`` is not given (default 0.05, at most
            2,000 rows).
        *args, **kwargs: ``Trainer``'s; ``train_dataset`` must be map-style, of dicts.

    :attr:`autofreeze` is the installed callback (its ``controller`` once training began),
    :attr:`cache` the activation cache (``None`` before training or without caching).
    """

    def __init__(self, *args, policy: Union[FreezePolicy, str, None] = None, options: Optional[PolicyOptions] = None,
                 cache: bool = True, cache_dir: Optional[str] = None, cache_memory: str = DEFAULT_MEMORY,
                 cache_disk: Optional[str] = None, cost_model: bool = True, val_data=None, val_fraction: float = 0.05,
                 **kwargs) -> None:
        if Trainer is object:
            raise ImportError("transformers is not installed: pip install \".[hf]\"")
        if val_data is None and _reads_val_slice(policy) and kwargs.get("train_dataset") is not None:
            val_data = _hold_out(kwargs, policy, val_fraction)
        self.autofreeze = AutoFreezeCallback(policy, options, val_data=val_data)
        self._epochs, self._counts = SamplerEpoch(), CacheCounts(self._cache_totals)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), self.autofreeze, self._epochs, self._counts]
        super().__init__(*args, **kwargs)
        if cache:
            check_cached_setup(self)
            if self.train_dataset is not None:
                self.train_dataset = IndexedRows(self.train_dataset)
        self.use_cache, self.cost_model = cache, cost_model
        if cache_dir is not None and self.args.world_size > 1:
            cache_dir = os.path.join(cache_dir, f"rank{self.args.process_index}")
        self.cache_options = {"path": cache_dir, "memory_budget": cache_memory, "disk_budget": cache_disk}
        self.cache: Optional[ActivationCache] = None
        self._runner: Optional[FrozenPrefixRunner] = None
        self.cache_counters: dict = {}  #: the cache's counters when training ended (a resumed run: all of it)
        self._through_runner = False  # the last training forward bypassed the DDP wrapper
        self.allreduce_bytes: list = []  #: under several processes: gradient bytes averaged per update

    def _get_train_sampler(self, train_dataset=None):
        """Under several processes with the cache: each rank keeps its own samples all run."""
        if not self.use_cache or self.args.world_size <= 1:
            return super()._get_train_sampler(train_dataset)
        ds = train_dataset if train_dataset is not None else self.train_dataset
        lengths = [len(ds[i]["input_ids"]) for i in range(len(ds))] if groups_by_length(self.args) else None
        self._epochs.sampler = RankStableSampler(len(ds), self.args.world_size, self._train_batch_size, self.args.seed,
                                                 lengths=lengths)
        return self._epochs.sampler

    def training_step(self, model, inputs, num_items_in_batch=None):
        """``Trainer.training_step``; under several processes, after the last micro-batch of an
        update, the gradient average DDP would have done (the cached forward bypasses it)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._through_runner and self.args.world_size > 1 and self.accelerator.sync_gradients:
            self.allreduce_bytes.append(all_reduce_gradients(self.model.parameters()))
        return loss

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if INDEX not in self._signature_columns:
            self._signature_columns.append(INDEX)

    def _runner_for(self) -> Optional[FrozenPrefixRunner]:
        ctl = self.autofreeze.controller
        if not self.use_cache or ctl is None:
            return None
        if self._runner is None or self._runner.controller is not ctl:
            device = next(self.model.parameters()).device
            # a fresh fingerprint per training run: a disk tier left by an earlier run is never read
            run = uuid.uuid4().hex
            try:
                self.cache = ActivationCache(device=device, fingerprint={"trainer_run": run}, **self.cache_options)
            except CacheInUse as exc:  # another live run holds the folder: this one takes a folder of its own
                opts = {**self.cache_options, "path": os.path.join(self.cache_options["path"], f"run-{run}")}
                logger.warning("%s; this run caches in %s instead", exc, opts["path"])
                self.cache = ActivationCache(device=device, fingerprint={"trainer_run": run}, **opts)
            self._runner = FrozenPrefixRunner(self.model, ctl, self.cache, cost_model=self.cost_model)
        return self._runner

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``Trainer.compute_loss``, the training forward going through the frozen-prefix runner."""
        indices = inputs.pop(INDEX, None)
        runner = self._runner_for() if model.training and indices is not None else None
        if runner is not None:  # the last epoch's rows are never read back: nothing is written then
            runner.later_passes = int(self.state.epoch or 0) + 1 < math.ceil(self.state.num_train_epochs or 1)
        self._through_runner = runner is not None
        target = _ThroughRunner(runner, indices, model) if runner is not None else model
        return super().compute_loss(target, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def train(self, resume_from_checkpoint: Union[str, bool, None] = None, *args, **kwargs):
        """``Trainer.train``; with ``resume_from_checkpoint`` (a folder, or True for the newest
        ``checkpoint-*`` in ``output_dir``) the frozen prefix is frozen again first, so the
        optimizer the Trainer builds matches the checkpoint's (no ``prepare_resume`` call needed);
        the cache starts empty and refills from the first epoch resumed."""
        if resume_from_checkpoint:
            resume_from_checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
            self.autofreeze.prepare_resume(self.model, resume_from_checkpoint)
        self._counts.resume_from(resume_from_checkpoint or None, self.args.process_index)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._close_cache()

    def _resolve_checkpoint(self, ckpt: Union[str, bool]) -> str:
        if ckpt is True:
            from transformers.trainer_utils import get_last_checkpoint

            ckpt = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
            if ckpt is None:
                raise ValueError(f"resume_from_checkpoint=True: no checkpoint-* folder in {self.args.output_dir}")
        return str(ckpt)

    def _cache_totals(self) -> dict:
        """The cache's counters and the rows left unwritten (a last epoch's, never read back) so
        far, the processes' before a resume included."""
        return add_counts(self._counts.before, self._runner.counters() if self._runner is not None else {})

    def _close_cache(self) -> None:
        if self._runner is not None:
            self.cache_counters = self._cache_totals()
            self._runner.close()
        if self.cache is not None:
            self.cache.close()
        self._runner = self.cache = None  # (a later train() without a step must not count them again)
