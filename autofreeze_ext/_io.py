"""The one atomic-write helper: a crash leaves the old file or the new one, never half of one."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, IO


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, fsync it, rename it over
    ``path`` and fsync the folder (so the rename itself survives a power cut)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_json(path: str, obj: Any, indent: int = 1) -> None:
    """:func:`atomic_write` of ``obj`` as JSON (strict: a NaN or infinite float is written as
    ``null``, which every JSON reader takes)."""
    atomic_write(path, lambda f: json.dump(finite(obj), f, indent=indent, allow_nan=False))


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
