"""A fine-tuning task: texts (single or pairs), model targets and their label space."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from .columns import Columns
from .errors import DataError
from .labels import LabelSpace
from .read import read_table


@dataclass
class Task:
    """Examples of one split: ``texts`` (and ``text_pairs`` for pair tasks), ``labels`` (class
    ids or floats, per ``label_space``), and where they came from."""

    texts: List[str]
    labels: list
    label_space: LabelSpace
    path: str
    text_pairs: Optional[List[str]] = None
    columns: Columns = Columns()

    @property
    def sentences(self) -> List[str]:
        return self.texts

    @property
    def num_labels(self) -> int:
        return self.label_space.num_labels

    def __len__(self) -> int:
        return len(self.labels)


def load_task(path: str, *, columns: Columns = Columns(), fmt: Optional[str] = None, limit: Optional[int] = None,
              label_space: Optional[LabelSpace] = None, label_kind: str = "auto",
              train_path: Optional[str] = None) -> Task:
    """Read a task file (TSV, CSV, JSON Lines or Parquet). Without ``label_space`` (a
    training split) the label space is inferred from its labels; with one (a dev split) the
    labels must fit it."""
    table = read_table(path, fmt, limit)
    cols = columns.resolve(table.columns, path)
    texts = _texts(table.column(cols.text), table.where, cols.text)
    pairs = _texts(table.column(cols.text_pair), table.where, cols.text_pair) if cols.text_pair else None
    raw = table.column(cols.label)
    return _task(texts, pairs, raw, table.where, path, cols, label_space, label_kind, train_path)


def task_from_records(records, *, columns: Columns = Columns(), label_space: Optional[LabelSpace] = None,
                      label_kind: str = "auto", name: str = "<records>", limit: Optional[int] = None) -> Task:
    """A task from a map-style dataset of dicts: a ``datasets.Dataset``, a list of dicts, or
    anything with ``len`` and ``[i] -> dict``."""
    n = len(records) if limit is None else min(limit, len(records))
    if n == 0:
        raise DataError(f"{name}: no examples")
    first = records[0]
    if not isinstance(first, dict):
        raise DataError(f"{name}: examples must be dicts of column -> value, got {type(first).__name__}")
    rows = [records[i] for i in range(n)]
    where = lambda i: f"{name} (example {i})"  # noqa: E731
    cols = columns.resolve(list(first), name)
    get = lambda c: [_get(r, c, where, i) for i, r in enumerate(rows)]  # noqa: E731
    pairs = _texts(get(cols.text_pair), where, cols.text_pair) if cols.text_pair else None
    return _task(_texts(get(cols.text), where, cols.text), pairs, get(cols.label), where, name, cols, label_space,
                 label_kind, None)


def _task(texts, pairs, raw, where, path, cols, label_space, label_kind, train_path) -> Task:
    space = label_space or LabelSpace.infer(raw, where, label_kind)
    labels = space.encode(raw, where, train_path or "the training data")
    return Task(texts, labels, space, path, pairs, cols)


def _get(row: dict, col: str, where: Callable[[int], str], i: int):
    if col not in row:
        raise DataError(f"{where(i)}: no column {col!r}")
    return row[col]


def _texts(values: Sequence, where: Callable[[int], str], col: str) -> List[str]:
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v):
            raise DataError(f"{where(i)}: the {col!r} text is missing")
        out.append(str(v))
    return out
