"""Tokenise a task into model inputs (pairs as pairs: ``[CLS] a [SEP] b [SEP]``)."""
from __future__ import annotations

import torch

from .task import Task


def encode(task: Task, tokenizer, max_length: int) -> dict:
    """Padded input tensors and ``labels`` (long for classes, float for regression); pairs are
    truncated ``longest_first`` and carry token type ids."""
    enc = tokenizer(task.texts, task.text_pairs, padding="max_length", truncation="longest_first",
                    max_length=max_length, return_tensors="pt")
    dtype = torch.float32 if task.label_space.regression else torch.long
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
           "labels": torch.tensor(task.labels, dtype=dtype)}
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    return out
