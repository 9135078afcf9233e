"""A validation slice held out of the training rows (stratified by class), never trained on."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import List, Tuple

from .errors import DataError
from .task import Task

#: the slice's share of the training rows when the user gives no validation file, and its cap
DEFAULT_FRACTION = 0.05
MAX_ROWS = 2000
#: below this many rows a slice's score moves in steps too coarse to see a plateau: warn
FEW_ROWS = 100


def slice_size(n: int, fraction: float, max_rows: int = MAX_ROWS) -> int:
    """Rows held out of ``n``: ``round(fraction * n)``, at least 1, at most ``max_rows`` and
    never all of them."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    return max(1, min(max_rows, round(fraction * n), n - 1))


def pick_rows(labels, k: int, seed: int, regression: bool = False) -> List[int]:
    """``k`` row indices (sorted) drawn with ``seed``: stratified by class for classification
    (each class keeps its share; rounding goes to the largest remainders), uniform for regression."""
    rng = random.Random(seed)
    if regression:
        return sorted(rng.sample(range(len(labels)), k))
    by_class = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[int(y)].append(i)
    n = len(labels)
    want = {c: k * len(rows) / n for c, rows in by_class.items()}
    take = {c: int(w) for c, w in want.items()}
    for c in sorted(want, key=lambda c: want[c] - take[c], reverse=True)[: k - sum(take.values())]:
        take[c] += 1
    # every class keeps at least one training row (a tiny class may then have none in the slice)
    return sorted(i for c in sorted(by_class) for i in rng.sample(by_class[c], min(take[c], len(by_class[c]) - 1)))


def _subset(task: Task, rows: List[int], path: str) -> Task:
    pairs = [task.text_pairs[i] for i in rows] if task.text_pairs is not None else None
    return Task([task.texts[i] for i in rows], [task.labels[i] for i in rows], task.label_space, path, pairs,
                task.columns)


def split_rows(labels, fraction: float, seed: int, regression: bool, where: str,
               max_rows: int = MAX_ROWS) -> Tuple[List[int], List[int]]:
    """``(training row indices, validation row indices)`` of rows with these ``labels``: the
    slice is ``slice_size(len(labels), fraction)`` rows drawn with ``seed`` (:func:`pick_rows`),
    every class keeping a training row; :class:`DataError` naming ``where`` when too few rows
    allow that. The same labels, fraction and seed always give the same slice."""
    n = len(labels)
    if n < 2:
        raise DataError(f"{where}: {n} training row(s): too few to hold out a validation slice")
    val = pick_rows(labels, slice_size(n, fraction, max_rows), seed, regression)
    if not val:
        raise DataError(f"{where}: {n} training rows: too few to hold out a validation slice and keep "
                        "every class in training; pass --val FILE")
    held = set(val)
    return [i for i in range(n) if i not in held], val


def hold_out(task: Task, fraction: float = DEFAULT_FRACTION, seed: int = 0,
             max_rows: int = MAX_ROWS) -> Tuple[Task, Task]:
    """``(training rows, validation slice)`` of a task (:func:`split_rows`, stratified by class)."""
    keep, val = split_rows(task.labels, fraction, seed, task.label_space.regression, task.path, max_rows)
    return _subset(task, keep, task.path), _subset(task, val, f"{task.path} (validation slice)")
