"""GLUE-format single-sentence classification data (``sentence<TAB>label``)."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from torch.utils.data import Dataset, Sampler

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


class PlannedBatchSampler(Sampler):
    """Batch sampler whose epoch order is known before the epoch runs.

    Shuffles like ``DataLoader(shuffle=True)`` but lets the caller take the order first
    (:meth:`plan_epoch`), e.g. to hand it to the activation cache's prefetcher; iterating then
    yields exactly those batches. ``state_dict()`` holds the generator state and the position
    inside the epoch, so a resumed run continues with the same order.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if n < 1 or batch_size < 1:
            raise ValueError("need at least one sample and a positive batch size")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self._planned: Optional[List[List[int]]] = None
        self.position = 0  #: batches of the current epoch already yielded

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def plan_epoch(self) -> List[List[int]]:
        """Draw (once) and return the coming epoch's batches."""
        if self._planned is None:
            order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
            order = order.tolist()
            self._planned = [order[s:s + self.batch_size] for s in range(0, self.n, self.batch_size)]
            if self.drop_last and len(self._planned[-1]) < self.batch_size:
                self._planned.pop()
            self.position = 0
        return self._planned

    def __iter__(self):
        batches = self.plan_epoch()
        while self.position < len(batches):
            b = batches[self.position]
            self.position += 1
            yield b
        self._planned = None

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "planned": self._planned, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._planned = state["planned"]
        self.position = state["position"]
