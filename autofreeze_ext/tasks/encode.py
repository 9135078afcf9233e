"""Tokenise a task into model inputs (pairs as pairs: ``[CLS] a [SEP] b [SEP]``)."""
from __future__ import annotations

import torch

from .task import Task


def encode(task: Task, tokenizer, max_length: int, pad_to_max: bool = False) -> dict:
    """Input tensors and ``labels`` (long for classes, float for regression); pairs are
    truncated ``longest_first`` and carry token type ids.

    Rows are right-padded to the longest row of the task (``pad_to_max``: to ``max_length``, as
    ``--batching padded`` wants); a batch is then cut to its own longest row
    (:func:`~autofreeze_ext.batching.trim_batch`)."""
    enc = tokenizer(task.texts, task.text_pairs, padding="max_length" if pad_to_max else "longest",
                    truncation="longest_first", max_length=max_length, return_tensors="pt")
    if getattr(tokenizer, "padding_side", "right") != "right" and not pad_to_max:
        raise ValueError(f"the tokenizer pads on the {tokenizer.padding_side}; per-batch padding cuts padding on the "
                         "right: set tokenizer.padding_side = 'right' (or use --batching padded)")
    dtype = torch.float32 if task.label_space.regression else torch.long
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
           "labels": torch.tensor(task.labels, dtype=dtype)}
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    return out
