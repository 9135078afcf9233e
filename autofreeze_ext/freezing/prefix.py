"""Run a model as frozen prefix + active suffix, with the prefix's output served from a cache.

:class:`FrozenPrefixRunner` wraps a model whose first ``L`` blocks a
:class:`~autofreeze_ext.FreezeController` has frozen. Called with a batch and its sample
indices, it

1. looks the samples up in the :class:`~autofreeze_ext.ActivationCache`: a sample cached at
   depth ``d <= L`` needs only blocks ``d+1..L`` (none when ``d == L``);
2. runs what is missing without autograd and stops the forward pass right after block ``L``
   (so nothing past the prefix runs twice), and writes the depth-``L`` outputs back;
3. runs the model once more with the embeddings and blocks ``1..L`` replaced by stubs that
   return the depth-``L`` tensor, so only the active suffix computes, with autograd as usual.

Rows are cached without their padding: a sample's record holds its real tokens' hidden states
(``[real tokens, hidden]``, found from the batch's ``attention_mask``), so the same row serves
batches of any length (per-batch padding, length grouping); the runner pads cached rows to the
batch's length with zeros, which the attention mask hides from every real token.

It works on any model a :class:`~autofreeze_ext.BlockLayout` describes whose blocks take the
previous block's output as their first argument (Hugging Face BERT family, ResNet stages,
plain block lists). Frozen blocks run in eval mode (the controller keeps them there), so
their output is deterministic and cached logits equal recomputed ones.

Caching only where it pays: after each freeze the runner times the prefix's forward pass and
asks the cache what reading a sample costs from the tier it would land in; it caches at that
depth only when reading is faster, and logs the numbers (:attr:`decisions`).
"""
from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..cache.activation_cache import ActivationCache
from ..timing import now
from .controller import FreezeController

log = logging.getLogger("autofreeze_ext")


class _PrefixDone(Exception):
    """Raised from a forward hook to stop the forward pass once the prefix output exists."""


class FrozenPrefixRunner:
    """Callable ``runner(indices, **batch) -> model output`` that skips cached frozen blocks.

    Args:
        model: the model the controller freezes.
        controller: its :class:`FreezeController` (supplies the layout and the frozen depth).
        cache: an :class:`ActivationCache`; ``None`` runs the model unchanged.
        cost_model: cache only at depths where reading beats recomputing (default True);
            False caches at every depth >= ``min_depth``.
        min_depth: never cache below this many frozen blocks.
        timers: optional dict that accumulates the seconds spent in the cache under ``"cache_io"``.
        suffix: what runs the active suffix (default: ``model`` itself); e.g. a
            :class:`~autofreeze_ext.parallel.ddp.FreezingDDP` around it, so that DDP sees only
            the suffix. When given, the frozen prefix always runs outside it, without
            autograd, also when nothing is cached.
    """

    def __init__(self, model: nn.Module, controller: FreezeController, cache: Optional[ActivationCache] = None,
                 cost_model: bool = True, min_depth: int = 1, timers: Optional[Dict[str, float]] = None,
                 suffix: Optional[Callable] = None) -> None:
        self.model = model
        self.suffix = suffix if suffix is not None else model
        self.split = suffix is not None
        self.controller = controller
        self.cache = cache
        self.cost_model = cost_model
        self.min_depth = max(1, int(min_depth))
        self.layout = controller.layout
        self.stub_embeddings = self.layout.kind.startswith("huggingface")
        self.timers = timers if timers is not None else defaultdict(float)
        self._device = next(model.parameters()).device  # timings synchronise a CUDA device first
        self.decisions: List[dict] = []
        #: a later pass over the data will read what this one writes; the training loop sets it
        #: False for its last epoch, whose rows no pass reads back (nothing is written then)
        self.later_passes = True
        self.writes_skipped = 0  #: rows not written because no later pass reads them
        self._decided: Dict[int, bool] = {}
        self._tuple_out: Optional[bool] = None
        self._fmt_hook = self.layout.blocks[0].register_forward_hook(self._learn_format)

    # ------------------------------------------------------------------ public
    def __call__(self, indices, **batch):
        depth = self.controller.frozen_depth
        idx = [int(i) for i in (indices.tolist() if torch.is_tensor(indices) else indices)]
        if self.cache is None or depth < self.min_depth or (
                (self._decided.get(depth) is False or not self.later_passes)
                and max(self.cache.depths(idx), default=0) == 0):
            # no cache, or caching does not pay at this depth (or no later pass reads it) and
            # nothing is cached
            if self.cache is not None and depth >= self.min_depth and self._decided.get(depth) is not False:
                self.writes_skipped += len(idx)
            if self.split and depth > 0 and self._tuple_out is not None:
                return self.run_suffix(batch, self.advance(batch, 0, None, depth), depth)
            return self.suffix(**batch)
        t0 = now(self._device)
        hits = self.cache.get(idx)
        self.timers["cache_io"] += now(self._device) - t0
        mask = _token_mask(batch)
        lengths = mask.sum(1).tolist() if mask is not None else None
        groups: Dict[int, List[int]] = defaultdict(list)
        for pos, i in enumerate(idx):
            # Until a real block has run, the stubs do not know the blocks' output format:
            # the first batch runs its prefix from the inputs. A record of another length than
            # the row's real tokens is not this row's: recomputed.
            hit = hits.get(i)
            usable = (hit is not None and hit[0] <= depth and self._tuple_out is not None
                      and (lengths is None or hit[1].shape[0] == lengths[pos]))
            groups[hit[0] if usable else 0].append(pos)
        rows: List[Optional[torch.Tensor]] = [None] * len(idx)
        for d, positions in groups.items():
            if d == depth:
                for p in positions:
                    rows[p] = hits[idx[p]][1]
                continue
            sub = _select(batch, positions, len(idx))
            sub_mask = sub["attention_mask"] if mask is not None else None
            start = _pad([hits[idx[p]][1] for p in positions], sub_mask) if d > 0 else None
            t0 = now(self._device)
            h = self.advance(sub, d, start, depth)
            dt = now(self._device) - t0
            parts = _unpad(h, sub_mask)
            if depth not in self._decided:
                # the prefix's cost per sample, scaled up when only blocks d+1..L ran
                self._decide(depth, parts, dt / len(positions) * depth / (depth - d))
            if self._decided.get(depth, False) and not self.later_passes:
                self.writes_skipped += len(positions)
            elif self._decided.get(depth, False):
                t0 = now(self._device)
                self.cache.put([idx[p] for p in positions], depth, parts)
                self.timers["cache_io"] += now(self._device) - t0
            for k, p in enumerate(positions):
                rows[p] = parts[k]
        return self.run_suffix(batch, _pad(rows, mask), depth)

    def advance(self, batch: dict, from_depth: int, start: Optional[torch.Tensor], to_depth: int) -> torch.Tensor:
        """Block-``to_depth`` output of ``batch``, starting from the block-``from_depth`` output
        ``start`` (``None`` with ``from_depth == 0``: from the inputs). No autograd."""
        captured = []

        def stop(module, args, output):
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)
            raise _PrefixDone

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        handle = self.layout.blocks[to_depth - 1].register_forward_hook(stop)
        try:
            with torch.no_grad(), self._stubbed(from_depth, start):
                try:
                    self.model(**inputs)
                except _PrefixDone:
                    pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"block {to_depth - 1} did not run in the forward pass")
        return captured[0].detach()

    def run_suffix(self, batch: dict, hidden: torch.Tensor, depth: int):
        """The model's output with blocks ``1..depth`` (and the stem) replaced by ``hidden``."""
        with self._stubbed(depth, hidden):
            return self.suffix(**batch)

    def counters(self) -> dict:
        """The cache's counters (:meth:`ActivationCache.counters`) and the rows this runner left
        unwritten because no later pass reads them (``writes_skipped``)."""
        return {"writes_skipped": self.writes_skipped, **(self.cache.counters() if self.cache is not None else {})}

    def close(self) -> None:
        self._fmt_hook.remove()

    # ------------------------------------------------------------------ internals
    def _learn_format(self, module, args, output) -> None:
        self._tuple_out = isinstance(output, (tuple, list))
        self._fmt_hook.remove()

    @contextlib.contextmanager
    def _stubbed(self, depth: int, value: Optional[torch.Tensor]):
        if depth == 0:
            yield
            return
        block_stub = _make_stub((value,) if self._tuple_out else value)
        emb_stub = _make_stub(value)
        patched = list(self.layout.blocks[:depth])
        for m in patched:
            m.forward = block_stub
        if self.stub_embeddings:
            for m in self.layout.embeddings:
                m.forward = emb_stub
            patched += self.layout.embeddings
        try:
            yield
        finally:
            for m in patched:
                del m.forward

    def _decide(self, depth: int, rows: List[torch.Tensor], prefix_s_per_sample: float) -> None:
        row_bytes = sum(r.numel() for r in rows) * rows[0].element_size() // len(rows)  # the mean row
        if self.cost_model:
            read_s, tier = self.cache.read_seconds_per_sample(row_bytes)
            ok = read_s < prefix_s_per_sample
        else:
            read_s, tier, ok = float("nan"), "any", True
        self._decided[depth] = ok
        d = {"depth": depth, "step": self.controller.global_step, "prefix_ms_per_sample": 1e3 * prefix_s_per_sample,
             "read_ms_per_sample": 1e3 * read_s, "tier": tier, "sample_bytes": row_bytes, "cache": ok}
        self.decisions.append(d)
        log.info("cache decision at depth %d: read %.3f ms/sample from %s vs prefix forward %.3f ms/sample -> %s",
                 depth, d["read_ms_per_sample"], tier, d["prefix_ms_per_sample"], "cache" if ok else "recompute")


def _make_stub(out):
    def stub(*args, **kwargs):
        return out
    return stub


def _token_mask(batch: dict) -> Optional[torch.Tensor]:
    """The batch's ``[batch, length]`` attention mask, which says each row's real tokens (None
    without one: rows are then cached whole)."""
    mask = batch.get("attention_mask")
    return mask if torch.is_tensor(mask) and mask.dim() == 2 else None


def _unpad(h: torch.Tensor, mask: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Each row of ``h`` (``[batch, length, ...]``) without its padded positions: ``[real, ...]``
    (the whole row without a mask). The rows are views of one contiguous tensor."""
    if mask is None:
        return list(h.unbind(0))
    keep = mask.to(h.device).bool()
    return list(h[keep].split(keep.sum(1).tolist()))


def _pad(rows: List[torch.Tensor], mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The batch's ``[batch, length, ...]`` tensor from rows without padding: each row's values at
    its real positions, zeros at padded ones (masked in attention: no real token reads them)."""
    if mask is None:
        return torch.stack(rows)
    flat = torch.cat([r.to(rows[0].device) for r in rows]) if len(rows) > 1 else rows[0]
    keep = mask.to(flat.device).bool()
    out = flat.new_zeros((*keep.shape, *flat.shape[1:]))
    out[keep] = flat
    return out


def _select(batch: dict, positions: List[int], n: int) -> dict:
    if len(positions) == n:
        return batch
    index = torch.tensor(positions)
    return {k: (v.index_select(0, index.to(v.device)) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n
                else v) for k, v in batch.items()}
