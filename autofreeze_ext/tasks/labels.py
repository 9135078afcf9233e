"""Label spaces: integer class ids, class names, or float targets (regression)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .errors import DataError

KINDS = ("auto", "classes", "regression")


@dataclass
class LabelSpace:
    """How a task's labels map to model targets.

    ``kind`` is ``"ids"`` (integer class ids as given, ``num_labels`` = largest + 1),
    ``"names"`` (class names, ids in sorted order) or ``"regression"`` (float targets,
    ``num_labels`` = 1, mean squared error as in Hugging Face)."""

    kind: str
    names: List[str] = field(default_factory=list)  #: class i's name (ids: "0", "1", ...)

    @property
    def regression(self) -> bool:
        return self.kind == "regression"

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.names)

    @property
    def id2label(self) -> Optional[Dict[int, str]]:
        return None if self.regression else dict(enumerate(self.names))

    @property
    def label2id(self) -> Optional[Dict[str, int]]:
        return None if self.regression else {n: i for i, n in enumerate(self.names)}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "num_labels": self.num_labels, "id2label": self.id2label}

    @classmethod
    def infer(cls, values: Sequence, where: Callable[[int], str], kind: str = "auto") -> "LabelSpace":
        """The label space of the training labels ``values`` (``where(i)`` names row ``i``).

        ``auto``: integers are class ids (every id from 0 to the largest must occur), other
        numbers regression targets, anything else class names; a file mixing numbers and names
        is an error. ``classes`` treats numbers as class ids when integral (gaps allowed), else
        everything as names; ``regression`` needs numbers. NaN or infinite labels are errors."""
        if kind not in KINDS:
            raise DataError(f"unknown label kind {kind!r}; known: {', '.join(KINDS)}")
        texts = [_text(v, where, i) for i, v in enumerate(values)]
        _check_one_kind(texts, where, kind)
        ints = _all(texts, _as_int)
        if ints is not None and kind != "regression":
            for i, v in enumerate(ints):
                if v < 0:
                    raise DataError(f"{where(i)}: label {v} is negative (class ids count from 0)")
            missing = sorted(set(range(max(ints) + 1)) - set(ints))
            if missing and kind == "auto":
                raise DataError(f"class id(s) {', '.join(map(str, missing[:10]))} never occur in the training labels "
                                f"(ids run 0..{max(ints)}): renumber the classes without gaps, or pass "
                                f"--label-kind classes to keep {max(ints) + 1} classes")
            return _two_classes(cls("ids", [str(i) for i in range(max(ints) + 1)]), where)
        if kind == "regression" or (kind == "auto" and _all(texts, _as_float) is not None):
            return cls("regression")  # encode() names any label that is not a number
        return _two_classes(cls("names", sorted(set(texts))), where)

    def encode(self, values: Sequence, where: Callable[[int], str], train_path: str = "the training data") -> list:
        """Model targets of ``values``: class ids (int) or floats; a value the space does not
        hold (a class unseen in training) is a :class:`DataError` naming file, line and value."""
        out, ids = [], self.label2id
        for i, v in enumerate(values):
            t = _text(v, where, i)
            if self.regression:
                x = _as_float(t)
                if x is None:
                    raise DataError(f"{where(i)}: label {t!r} is not a number (the task is a regression)")
                out.append(x)
                continue
            key = str(_as_int(t)) if self.kind == "ids" and _as_int(t) is not None else t
            if key not in ids:
                raise DataError(f"{where(i)}: label {t!r} does not occur in {train_path} "
                                f"(its classes: {', '.join(self.names[:20])})")
            out.append(ids[key])
        return out


def _check_one_kind(texts: List[str], where, kind: str) -> None:
    """No NaN or infinite label; in ``auto`` no file mixing numbers and names."""
    numbers = []
    for i, t in enumerate(texts):
        try:
            x = float(t)
        except ValueError:
            numbers.append(False)
            continue
        if not math.isfinite(x):
            raise DataError(f"{where(i)}: label {t!r} is not a finite number")
        numbers.append(True)
    if kind == "auto" and any(numbers) and not all(numbers):
        i, j = numbers.index(True), numbers.index(False)
        raise DataError(f"the labels mix numbers ({where(i)}: {texts[i]!r}) and names ({where(j)}: {texts[j]!r}): a "
                        "label file must be one kind; fix the file, or pass --label-kind classes to take every label "
                        "as a class name")


def _text(v, where, i: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise DataError(f"{where(i)}: the label is missing")
    if isinstance(v, bool):
        return str(int(v))
    t = repr(v) if isinstance(v, float) else str(v).strip()  # a typed float column stays a float
    if t == "":
        raise DataError(f"{where(i)}: the label is empty")
    return t


def _as_int(t: str) -> Optional[int]:
    try:
        return int(t)
    except ValueError:
        return None


def _as_float(t: str) -> Optional[float]:
    try:
        x = float(t)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _all(texts: List[str], conv) -> Optional[list]:
    out = []
    for t in texts:
        x = conv(t)
        if x is None:
            return None
        out.append(x)
    return out


def _two_classes(space: "LabelSpace", where: Callable[[int], str]) -> "LabelSpace":
    """A classifier needs at least two classes: with one, every loss is 0 and nothing is learned."""
    if space.num_labels < 2:
        file = where(0).rsplit(":", 1)[0]
        raise DataError(f"{file}: every training label is {space.names[0]!r}: a classifier needs at least two classes "
                        "(check the label column, or --label-kind regression for numeric targets)")
    return space
