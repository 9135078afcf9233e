"""Read a table of examples from TSV, CSV, JSON Lines or Parquet (pandas/pyarrow parse them)."""
from __future__ import annotations

import csv
import os
from typing import List, Optional

from .errors import DataError

FORMATS = ("tsv", "csv", "jsonl", "parquet")
_EXTENSIONS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl",
               ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def detect_format(path: str, fmt: Optional[str] = None) -> str:
    """``fmt`` when given, else the format the file's extension names."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise DataError(f"unknown data format {fmt!r}; known: {', '.join(FORMATS)}")
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise DataError(f"{path}: cannot tell the format from the extension {ext!r}; "
                        f"pass --format ({', '.join(FORMATS)})")
    return _EXTENSIONS[ext]


class Table:
    """Rows of a data file: ``columns`` (names as in the file) and ``column(name)`` values, with
    ``where(i)`` naming row ``i``'s place in the file (line for text formats, row for Parquet)."""

    def __init__(self, frame, path: str, fmt: str) -> None:
        self.frame, self.path, self.fmt = frame, path, fmt
        self.columns: List[str] = [str(c) for c in frame.columns]

    def __len__(self) -> int:
        return len(self.frame)

    def column(self, name: str) -> list:
        return self.frame[name].tolist()

    def where(self, i: int) -> str:
        if self.fmt in ("tsv", "csv"):
            return f"{self.path}:{self.frame.index[i] + 2}"  # a header line, then one line per row
        if self.fmt == "jsonl":
            return f"{self.path}:{self.frame.index[i] + 1}"
        return f"{self.path} (row {i})"


def _bad_json_line(path: str) -> Optional[str]:
    """``path:LINE`` of the first line of a JSON Lines file that is not one JSON value."""
    import json

    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except ValueError:
                    return f"{path}:{n}"
    return None


def read_table(path: str, fmt: Optional[str] = None, limit: Optional[int] = None) -> Table:
    """The first ``limit`` rows (all when ``None``) of ``path``. TSV is read without quoting
    (GLUE's files hold bare ``"`` characters), CSV with standard quoting."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    fmt = detect_format(path, fmt)
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - a dependency
        raise DataError("reading task files needs pandas: pip install pandas") from None
    try:
        frame = _read(pd, path, fmt, limit)
    except DataError:
        raise
    except Exception as exc:  # pandas/pyarrow parser errors name the line (JSON's a byte offset)
        where = _bad_json_line(path) if fmt == "jsonl" else None
        raise DataError(f"{where or path}: cannot read it as {fmt.upper()} ({exc})") from exc
    if limit is not None:
        frame = frame.iloc[:limit]
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")
    return Table(frame, path, fmt)


def _read(pd, path: str, fmt: str, limit: Optional[int]):
    text = dict(dtype=str, keep_default_na=False, na_filter=False, nrows=limit)
    if fmt == "tsv":
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty")
        return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, **text)
    if fmt == "csv":
        if os.path.getsize(path) == 0:
            raise DataError(f"{path}: the file is empty")
        return pd.read_csv(path, **text)
    if fmt == "jsonl":
        return pd.read_json(path, lines=True, dtype=False, nrows=limit, encoding="utf-8-sig")  # a BOM is skipped
    return pd.read_parquet(path)
