"""GLUE-format single-sentence classification data (``sentence<TAB>label``)."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from torch.utils.data import Dataset

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "sst2_sample"


class DataError(ValueError):
    """The task file is missing or malformed; the message says where and how."""


@dataclass
class TsvTask:
    sentences: List[str]
    labels: List[int]
    path: str

    @property
    def num_labels(self) -> int:
        return max(self.labels) + 1


def read_tsv(path: str, limit: Optional[int] = None) -> TsvTask:
    """Read a ``sentence<TAB>label`` file with a header line; labels are integers from 0."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected a GLUE-format TSV with columns sentence<TAB>label)")
    sentences, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty")
        cols = [c.strip().lower() for c in header]
        if "sentence" not in cols or "label" not in cols:
            raise DataError(f"{path}: header {header!r} lacks the columns 'sentence' and 'label'")
        si, li = cols.index("sentence"), cols.index("label")
        for n, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= max(si, li):
                raise DataError(f"{path}:{n}: expected {len(cols)} tab-separated columns, found {len(row)}")
            try:
                label = int(row[li])
            except ValueError:
                raise DataError(f"{path}:{n}: label {row[li]!r} is not an integer") from None
            if label < 0:
                raise DataError(f"{path}:{n}: label {label} is negative")
            sentences.append(row[si])
            labels.append(label)
            if limit is not None and len(sentences) >= limit:
                break
    if not sentences:
        raise DataError(f"{path}: no data rows after the header")
    return TsvTask(sentences, labels, path)


class IndexedDataset(Dataset):
    """Yields ``(index, item)``: the sample index keys the activation cache across epochs."""

    def __init__(self, tensors: dict) -> None:
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return i, {k: v[i] for k, v in self.tensors.items()}


def encode(task: TsvTask, tokenizer, max_length: int) -> dict:
    enc = tokenizer(task.sentences, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
           "labels": torch.tensor(task.labels, dtype=torch.long)}
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    return out
