"""Which columns hold the text, the optional second text and the label."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from .errors import DataError

#: GLUE's usual (first text, second text) column names, tried in this order
DEFAULT_TEXT_COLUMNS = [("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                        ("premise", "hypothesis"), ("sentence", None), ("text", None)]
DEFAULT_LABEL_COLUMNS = ["label", "labels", "score"]


@dataclass(frozen=True)
class Columns:
    """Column names of a task: ``text``, ``text_pair`` (``None``: single texts) and ``label``.

    ``None`` fields are found from the file's header (:data:`DEFAULT_TEXT_COLUMNS`,
    :data:`DEFAULT_LABEL_COLUMNS`, case-insensitive)."""

    text: Optional[str] = None
    text_pair: Optional[str] = None
    label: Optional[str] = None

    def resolve(self, names: Sequence[str], where: str) -> "Columns":
        """The columns to read from a file whose header is ``names``."""
        lower = {n.strip().lower(): n for n in names}

        def find(want: str, what: str) -> str:
            if want.strip().lower() not in lower:
                raise DataError(f"{where}: no {what} column {want!r} (columns: {list(names)})")
            return lower[want.strip().lower()]

        if self.text is not None:
            text = find(self.text, "text")
            pair = find(self.text_pair, "second text") if self.text_pair is not None else None
        elif self.text_pair is not None:
            raise DataError("--text-pair-column needs --text-column as well")
        else:
            text, pair = _default_texts(lower, names, where)
        label = find(self.label, "label") if self.label is not None else _default_label(lower, names, where)
        return Columns(text, pair, label)


def _default_texts(lower: dict, names: Sequence[str], where: str):
    for a, b in DEFAULT_TEXT_COLUMNS:
        if a in lower and (b is None or b in lower):
            return lower[a], (lower[b] if b else None)
    known: List[str] = [a if b is None else f"{a}/{b}" for a, b in DEFAULT_TEXT_COLUMNS]
    raise DataError(f"{where}: no text column found among {list(names)}; expected one of {', '.join(known)}, "
                    f"or pass --text-column (and --text-pair-column for pairs){_separator_hint(names)}")


def _separator_hint(names: Sequence[str]) -> str:
    """A header read as one column that holds another separator: say which."""
    if len(names) != 1:
        return ""
    for sep, what in (("\t", "tabs (name it .tsv or pass --format tsv)"),
                      (",", "commas (name it .csv or pass --format csv)"), (";", "semicolons"), ("|", "bars")):
        if sep in str(names[0]):
            return (f"; the header reads as one column: the file looks separated by {what}"
                    + ("; TSV needs tabs and CSV commas" if sep in ";|" else ""))
    return ""


def _default_label(lower: dict, names: Sequence[str], where: str) -> str:
    for a in DEFAULT_LABEL_COLUMNS:
        if a in lower:
            return lower[a]
    raise DataError(f"{where}: no label column found among {list(names)}; expected one of "
                    f"{', '.join(DEFAULT_LABEL_COLUMNS)}, or pass --label-column")
