"""Adaptive freezing for an unchanged Hugging Face ``Trainer``.

Usage::

    from autofreeze_ext.integrations.hf_callback import AutoFreezeCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[AutoFreezeCallback()])
    trainer.train()

The callback builds a :class:`~autofreeze_ext.FreezeController` on the Trainer's model and
optimizer when training begins and hooks the inner optimizer's ``step()``: the controller reads
the gradients right after each optimizer update, before ``Trainer`` zeroes them (so every policy
sees real gradients), counts one step per update under gradient accumulation, and never counts
an update that ``GradScaler`` skipped (fp16: the inner ``step()`` is not called then). It saves
and restores its state next to the
Trainer's checkpoints (``autofreeze_controller.pt`` in each ``checkpoint-*`` folder), so
``trainer.train(resume_from_checkpoint=ckpt)`` resumes with the same frozen depth once
``callback.prepare_resume(model, ckpt)`` has re-frozen the prefix (the Trainer builds its
optimizer from the parameters that require grad, before any callback runs).

For the activation cache as well (it needs each sample's index and the forward pass), use
:class:`autofreeze_ext.integrations.hf_trainer.AutoFreezeTrainer`, a ``Trainer`` subclass that installs this
callback.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Optional, Union

import torch

from ..batching import first_rows
from .._io import atomic_write
from ..freezing.controller import ControllerOptions, FreezeController
from ..policies import FreezePolicy, PolicyOptions, make_policy
from ..policies.registry import check_spec
from ..signals import NEEDS_PROBE, PROBE_SAMPLES, make_signals
from ._optional import optional_base

log = logging.getLogger("autofreeze_ext")

# transformers is optional: using this module without it explains how to install it
TrainerCallback, _HF_ERROR = optional_base("transformers", "TrainerCallback", "hf")

STATE_FILE = "autofreeze_controller.pt"


def _row_keys(loader) -> Optional[set]:
    """The columns of a training row as the Trainer's loader gives it to its collator (the
    Trainer drops a ``datasets.Dataset``'s unused columns, e.g. the text, from the training
    rows, not from ``val_data``), plus the label's names; None where rows cannot be indexed."""
    try:
        return set(loader.dataset[0]) | {"label", "labels", "label_ids"}
    except (TypeError, IndexError, KeyError, AttributeError, NotImplementedError):
        return None


def saved_folder(args, state) -> str:
    """The ``checkpoint-N`` folder the Trainer has just saved (in ``on_save``)."""
    return os.path.join(args.output_dir, f"checkpoint-{state.global_step}")


def updates_per_epoch(batches: int, accum: int) -> int:
    """The optimizer updates the Trainer runs in an epoch of ``batches`` batches accumulating
    ``accum`` (its own count: a last, shorter accumulation is an update too)."""
    return max(1, math.ceil(batches / max(1, accum)))


class AutoFreezeCallback(TrainerCallback):  # type: ignore[misc,valid-type]
    """A ``transformers.TrainerCallback`` that freezes the blocks that stopped learning.

    Args:
        policy: a :class:`~autofreeze_ext.FreezePolicy`, or a policy name from
            :data:`~autofreeze_ext.policies.POLICIES` (``"stability"``, ``"gradient+guards"``,
            ``"budget"``, ``"gradient"``, ``"plateau"`` ...) or a mode string as the CLI's ``--mode``
            takes it (``"full"``, ``"static:half"``, ``"static:K@STEP"``, ``"autofreeze"``; see
            :func:`~autofreeze_ext.policies.make_policy`), built when training begins with the Trainer's
            warm-up steps as the warm-up guard and its total steps for ``late`` and ``budget``
            (default: :data:`~autofreeze_ext.policies.DEFAULT_POLICY`, ``plateau``: all blocks but
            the top one freeze at once when ``val_data`` has stopped improving for an epoch,
            once the model has started learning; without ``val_data`` it falls back to
            :data:`~autofreeze_ext.policies.NO_VAL_DEFAULT`, ``late``, with a warning).
        options: :class:`~autofreeze_ext.policies.PolicyOptions` for a policy given by name
            (e.g. ``PolicyOptions(target_speedup=2.0)``).
        probe_samples: training samples in the probe batch of the probe signals a policy reads
            (the first ones of the training set, collated by the Trainer's collator).
        val_data: rows never trained on (a map-style dataset of tokenized rows with labels, e.g.
            ``ds.train_test_split(test_size=0.05, stratify_by_column="label")["test"]``), the
            validation slice of a policy that reads one (``"plateau"``); collated by the
            Trainer's collator. :class:`~autofreeze_ext.integrations.hf_trainer.AutoFreezeTrainer`
            holds one out of ``train_dataset`` itself.
        **controller_kwargs: ``blocks=``, ``embeddings=`` for :class:`~autofreeze_ext.FreezeController`,
            and the fields of :class:`~autofreeze_ext.freezing.controller.ControllerOptions`
            (``max_depth=``, ``anneal_steps=`` ...).

    After training begins, :attr:`controller` is the live controller. A policy that judges
    training converged (``PolicyOptions(stop_when_converged=True)`` with ``"plateau"``) ends
    training through ``control.should_training_stop``.
    """

    def __init__(self, policy: Union[FreezePolicy, str, None] = None, options: Optional[PolicyOptions] = None,
                 probe_samples: int = PROBE_SAMPLES, val_data=None, **controller_kwargs) -> None:
        if _HF_ERROR:
            raise ImportError(_HF_ERROR)
        if isinstance(policy, str):
            check_spec(policy)  # a policy name or a mode string (static:half, static:K@STEP ...), or a clear error
        self.policy = policy if policy is not None else "autofreeze"  # the default adaptive policy
        self.options = options
        self.probe_samples = probe_samples
        self.val_data = val_data
        self.controller_kwargs = controller_kwargs
        self.controller: Optional[FreezeController] = None
        self._pending_state: Optional[dict] = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kw):
        if model is None or optimizer is None:
            raise RuntimeError("AutoFreezeCallback needs the Trainer's model and optimizer at train begin")
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        steps_per_epoch = None
        if train_dataloader is not None:
            try:
                steps_per_epoch = updates_per_epoch(len(train_dataloader), args.gradient_accumulation_steps)
            except TypeError:  # iterable dataset without a length
                steps_per_epoch = None
        if isinstance(self.policy, str):
            from ..freezing.adapters import resolve_layout

            n = resolve_layout(model, blocks=self.controller_kwargs.get("blocks"),
                               embeddings=self.controller_kwargs.get("embeddings")).num_blocks
            self.policy = make_policy(self.policy, options=self._options(args, state), num_blocks=n,
                                      has_val_rows=self.val_data is not None)
        signals = make_signals(self.policy.signals, self._probe(train_dataloader, model)
                               if set(self.policy.signals) & set(NEEDS_PROBE) else None,
                               val=self._val(train_dataloader) if self.policy.reads_val_slice else None)
        # attach=True: the controller runs in the inner optimizer's step post-hook, where the
        # gradients of the update still exist (on_step_end comes after Trainer's zero_grad)
        options, rest = ControllerOptions.split(self.controller_kwargs, attach=True)
        self.controller = FreezeController(model, inner, self.policy, steps_per_epoch=steps_per_epoch,
                                           signals=signals, options=options, **rest)
        if self._pending_state is not None:
            self.controller.load_state_dict(self._pending_state)
            self._pending_state = None
            log.info("AutoFreezeCallback: resumed with %d frozen blocks", self.controller.frozen_depth)

    def _options(self, args, state) -> PolicyOptions:
        o = dataclasses.replace(self.options) if self.options is not None else PolicyOptions()
        total = int(state.max_steps or 0)
        o.warmup_steps = args.get_warmup_steps(total) if total and o.warmup_steps == 0 else o.warmup_steps
        o.total_steps = o.total_steps or total or None
        o.cached = False  # the Trainer runs the whole forward pass
        return o

    def _probe(self, loader, model) -> dict:
        """The first ``probe_samples`` training samples, collated as the Trainer collates them."""
        if loader is None or not hasattr(loader, "dataset"):
            raise RuntimeError("AutoFreezeCallback: this policy reads probe signals and needs the Trainer's "
                               "train dataloader (a map-style train_dataset)")
        return first_rows(loader, self.probe_samples, next(model.parameters()).device)

    def _val(self, loader) -> dict:
        """The validation slice's rows, collated as the Trainer collates training rows."""
        if self.val_data is None or len(self.val_data) == 0:
            raise ValueError(f"AutoFreezeCallback: {self.policy.describe()} reads a validation slice: pass "
                             "AutoFreezeCallback(val_data=rows never trained on), e.g. ds.train_test_split("
                             "test_size=0.05)['test'] (AutoFreezeTrainer holds one out itself)")
        if loader is None:
            raise RuntimeError("AutoFreezeCallback: the validation slice needs the Trainer's train dataloader")
        keep = _row_keys(loader)
        rows = [{k: v for k, v in self.val_data[i].items() if k != "sample_index" and (keep is None or k in keep)}
                for i in range(len(self.val_data))]
        batch = loader.collate_fn(rows)
        if "labels" not in batch:
            raise ValueError("AutoFreezeCallback: val_data rows need a label (a 'label' or 'labels' column)")
        return {k: v.cpu() for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def on_step_end(self, args, state, control, **kw):
        """The policy judged training converged: end it (the Trainer then evaluates and saves as
        at a normal end)."""
        if self.controller is not None and self.controller.policy.should_stop():
            control.should_training_stop = True

    def prepare_resume(self, model: torch.nn.Module, checkpoint: str) -> int:
        """Call before ``trainer.train(resume_from_checkpoint=checkpoint)``.

        The Trainer builds its optimizer from the parameters that require grad and then loads
        the checkpoint's optimizer state, which no longer holds the frozen blocks; so the frozen
        prefix must be frozen again before ``train()``. Returns the restored frozen depth.
        """
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no AutoFreeze state in this checkpoint")
        state = torch.load(path, weights_only=False)
        from ..freezing.adapters import resolve_layout

        layout = resolve_layout(model, blocks=self.controller_kwargs.get("blocks"),
                                embeddings=self.controller_kwargs.get("embeddings"))
        depth = int(state["frozen_depth"])
        for m in (layout.embeddings if depth else []) + layout.blocks[:depth]:
            m.requires_grad_(False)
        self._pending_state = state
        return depth

    def on_log(self, args, state, control, logs=None, model=None, **kw):
        """Training diverged (a NaN/infinite logged loss, or weights that became NaN/infinite,
        which the Trainer's NaN filter would hide from the log): stop with an error."""
        loss = (logs or {}).get("loss")
        bad = loss is not None and not math.isfinite(float(loss))
        if not bad and model is not None:
            bad = any(not bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)
        if bad:
            from ..training.parts.loss_guard import TrainingDiverged

            raise TrainingDiverged(f"AutoFreezeCallback: training diverged by step {state.global_step} (the loss or "
                                   f"the weights became NaN or infinite); try a lower learning_rate "
                                   f"(now {args.learning_rate:g})")

    def on_save(self, args, state, control, **kw):
        if self.controller is None:
            return
        folder = saved_folder(args, state)
        if os.path.isdir(folder):
            atomic_write(os.path.join(folder, STATE_FILE), functools.partial(torch.save, self.controller.state_dict()),
                         binary=True)

    def on_train_end(self, args, state, control, **kw):
        if self.controller is not None:
            self.controller.detach()  # the optimizer may outlive this training run
            log.info("AutoFreezeCallback: %d of %d blocks frozen at the end", self.controller.frozen_depth,
                     self.controller.num_blocks)
