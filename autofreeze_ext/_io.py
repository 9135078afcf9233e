"""The one atomic-write helper: a crash leaves the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
from typing import Any, Callable, IO


@contextlib.contextmanager
def ctrl_c_after():
    """Hold a Ctrl-C (SIGINT) that comes inside the block until it ends, then raise it: a write
    finishes whole. (Interrupted inside ``torch.save`` to a file object, torch's writer later
    writes to the closed file from a destructor and the process aborts.) Only in the main
    thread, and only while Python's own SIGINT handler is installed."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, fsync it, rename it over
    ``path`` and fsync the folder (so the rename itself survives a power cut). A Ctrl-C during
    the write is raised once the file is in place (:func:`ctrl_c_after`)."""
    with ctrl_c_after():
        _atomic_write(path, write, binary)


def _atomic_write(path: str, write: Callable[[IO], None], binary: bool) -> None:
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
