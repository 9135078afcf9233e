"""How rows become batches: per-batch padding and length grouping.

Rows are stored right-padded to the longest row of their dataset (``encode``); each batch is cut
to its own longest row, rounded up to a multiple of ``pad_to_multiple_of`` (:func:`trim_batch`),
which is what a Hugging Face ``DataCollatorWithPadding`` gives a ``Trainer`` user. Padded
positions are masked, so cutting them changes no real token's value.

``grouped`` batching (the default of ``autofreeze finetune``) puts rows of similar length in one
batch as transformers' ``LengthGroupedSampler`` does (``group_by_length=True``): the epoch's
random order is cut into megabatches of up to 50 batches, each sorted by length (longest first)
and cut into batches; then the order of the batches is shuffled (seeded) and the batch holding
the epoch's longest row goes first, so a batch too large for memory fails at once.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch.utils.data import default_collate

#: ``--batching``: ``grouped`` (rows of similar length together, padded per batch), ``random``
#: (shuffled, padded per batch), ``padded`` (shuffled, every row padded to ``--max-length``)
BATCHING = ("grouped", "random", "padded")
MEGABATCH = 50


def row_lengths(tensors: dict) -> List[int]:
    """Real tokens of each row (its attention mask's ones); the full width without a mask."""
    mask = tensors.get("attention_mask")
    if mask is None or mask.dim() != 2:
        n = len(next(iter(tensors.values())))
        ids = tensors.get("input_ids")
        return [int(ids.shape[1]) if ids is not None and ids.dim() == 2 else 1] * n
    return mask.sum(1).tolist()


def trim_batch(batch: dict, multiple: int = 1) -> dict:
    """``batch`` cut to its longest row (rounded up to a multiple of ``multiple``): the trailing
    columns where every row is padding go. Tensors shaped like the attention mask are cut; a
    batch without one is returned as it is."""
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or mask.shape[1] == 0:
        return batch
    width = mask.shape[1]
    real = mask.any(0).nonzero()
    longest = int(real[-1]) + 1 if len(real) else 1
    keep = min(width, -(-longest // max(1, multiple)) * max(1, multiple))
    if keep == width:
        return batch
    return {k: (v[:, :keep] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[:2] == mask.shape else v)
            for k, v in batch.items()}


class TrimCollate:
    """``collate_fn`` for :class:`~autofreeze_ext.samplers.IndexedDataset` rows: the default collate,
    then :func:`trim_batch` (``multiple=None``: no cut, every row keeps the stored width)."""

    def __init__(self, multiple: Optional[int] = 1) -> None:
        self.multiple = multiple

    def __call__(self, items):
        idx, batch = default_collate(items)
        return idx, (trim_batch(batch, self.multiple) if self.multiple else batch)


def grouped_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int,
                    generator: torch.Generator, drop_last: bool = False) -> List[List[int]]:
    """Batches of ``batch_size`` rows of similar length from a random ``order`` (see the module
    docstring); with ``drop_last`` the short batch goes (there is at most one)."""
    order = list(order)
    mult = min(len(order) // (batch_size * 4), MEGABATCH) or 1
    size = mult * batch_size
    batches: List[List[int]] = []
    for s in range(0, len(order), size):
        mega = sorted(order[s:s + size], key=lambda i: -lengths[i])  # stable: ties keep the random order
        batches += [mega[b:b + batch_size] for b in range(0, len(mega), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if not batches:
        return batches
    perm = torch.randperm(len(batches), generator=generator).tolist()
    batches = [batches[p] for p in perm]
    first = max(range(len(batches)), key=lambda k: lengths[batches[k][0]])
    batches.insert(0, batches.pop(first))
    return batches


def longest_first(tensors: dict) -> List[int]:
    """Row indices, longest row first (batches of neighbours then need little padding)."""
    lengths = row_lengths(tensors)
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.inference_mode()
def batched_logits(model, tensors: dict, rows: Sequence[int], batch_size: int) -> torch.Tensor:
    """The model's float32 logits on the CPU for ``rows`` of ``tensors`` (labels left out), in
    that order: no gradients, eval mode (restored after), ``batch_size`` rows per forward, each
    batch cut to its longest row. The evaluation and the validation slice both score this way."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    try:
        for s in range(0, len(rows), batch_size):
            idx = torch.tensor(list(rows[s:s + batch_size]))
            batch = trim_batch({k: v[idx] for k, v in tensors.items() if k != "labels"})
            out.append(model(**{k: v.to(dev) for k, v in batch.items()}).logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def first_rows(loader, n: int, device=None, skip: Sequence[str] = ()) -> dict:
    """The first ``n`` rows of ``loader``'s map-style dataset, collated by its ``collate_fn``:
    the tensors (those named in ``skip`` left out), on ``device`` (the integrations' probe batch)."""
    ds = loader.dataset
    batch = loader.collate_fn([ds[i] for i in range(min(n, len(ds)))])
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in skip}
