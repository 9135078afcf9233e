"""The disk tier's pure-Python twin of ``autofreeze_ext._C.RecordStore``.

Used where the compiled core is missing (or ``AUTOFREEZE_FORCE_REFERENCE=1``), so the
activation cache keeps a real disk tier everywhere. Same interface and semantics as the C++
store as :class:`~autofreeze_ext.ActivationCache` uses it: records appended to one data file
with a CRC32 each and a header naming the run that wrote it (a hash of the fingerprint, as
the C++ store's ``run_tag``: a record of another run is never served), an index written atomically at :meth:`flush` and reused by a later run with
the same fingerprint, a disk budget, planned batches served in order by :meth:`next`. What it
does not have: io_uring, O_DIRECT, a writer thread and read-ahead (reads are synchronous
``pread`` calls), pinned slots. Its file names differ from the C++ store's, so neither reads
the other's records.
"""
from __future__ import annotations

import ctypes
import json
import os
import struct
import zlib
from typing import Dict, List, Optional, Sequence

from .._io import atomic_json

DATA, INDEX = "py_records.bin", "py_index.json"
_HEADER = struct.Struct("<QQ")  # the writer's run tag, the row id; before each record's payload
OK, CORRUPT, SHORT, ERROR, MISSING = 0, 1, 2, 3, 4
_STAT_KEYS = ("puts", "rejected_budget", "rejected_full", "writes", "bytes_written", "write_errors", "reads_ok",
              "reads_corrupt", "reads_short", "reads_error", "bytes_read", "index_dropped", "segments_deleted")


class PyRecordStore:
    """``PyRecordStore(dir, disk_budget=0, fingerprint="")``; the C++ store's other options are
    accepted and ignored (their effect is reported by :meth:`info`)."""

    def __init__(self, dir: str, backend: str = "auto", direct: str = "auto", queue_depth: int = 32,
                 segment_bytes: int = 0, write_queue_bytes: int = 0, disk_budget: int = 0, fingerprint: str = "",
                 pin: bool = False) -> None:
        os.makedirs(dir, exist_ok=True)
        self.dir, self.budget, self.fingerprint = dir, int(disk_budget or 0), fingerprint
        self.run_tag = run_tag_of(fingerprint)
        self._entries: Dict[int, list] = {}  # id -> [depth, dtype code, shape, offset, nbytes, crc]
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        self._plan: List[List[int]] = []
        self._pos = 0
        self.disk_full = False
        self._open_note = self._open()

    # ------------------------------------------------------------------ open / close
    def _open(self) -> str:
        path, index = os.path.join(self.dir, DATA), os.path.join(self.dir, INDEX)
        saved = None
        if os.path.exists(index) and os.path.exists(path):
            try:
                with open(index) as f:
                    saved = json.load(f)
            except (OSError, ValueError):
                saved = None
        reuse = saved is not None and saved.get("fingerprint") == self.fingerprint
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if reuse else os.O_TRUNC), 0o644)
        self._end = os.fstat(self._fd).st_size
        if not reuse:
            why = "index of another run (fingerprint differs)" if saved is not None else "no index"
            return f"created (python store: {why})"
        self._entries = {int(k): v for k, v in saved["entries"].items() if v[3] + _HEADER.size + v[4] <= self._end}
        self._stats["index_dropped"] = len(saved["entries"]) - len(self._entries)
        return f"reused {len(self._entries)} records (python store)"

    def flush(self) -> None:
        if self._fd is None:
            return
        os.fsync(self._fd)
        atomic_json(os.path.join(self.dir, INDEX), {"fingerprint": self.fingerprint,
                                                    "entries": {str(k): v for k, v in self._entries.items()}})

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def live_bytes(self) -> int:
        return sum(e[4] for e in self._entries.values())

    def info(self) -> Dict[str, str]:
        return {"backend": "python (pread)", "backend_note": "compiled core missing: pure-Python record store",
                "direct": "0", "direct_note": "python store: buffered I/O", "alignment": "1",
                "registered_buffers": "0", "pinned": "0", "crc32c": "zlib crc32", "queue_depth": "1",
                "opened": self._open_note}

    def stats(self) -> Dict[str, int]:
        return dict(self._stats)

    def depths(self, ids: Sequence[int]) -> List[int]:
        return [self._entries[i][0] if i in self._entries else -1 for i in ids]

    def meta(self, i: int) -> Optional[tuple]:
        e = self._entries.get(i)
        return None if e is None else (e[0], e[1], list(e[2]), e[4])

    # ------------------------------------------------------------------ writes
    def put(self, i: int, depth: int, dtype: int, shape: Sequence[int], ptr: int, nbytes: int) -> bool:
        self._stats["puts"] += 1
        if self.budget and self.live_bytes + nbytes > self.budget:
            self._stats["rejected_budget"] += 1
            return False
        if self.disk_full:
            self._stats["rejected_full"] += 1
            return False
        payload = ctypes.string_at(ptr, nbytes)
        try:
            os.pwrite(self._fd, _HEADER.pack(self.run_tag, int(i) & (2**64 - 1)) + payload, self._end)
        except OSError:
            self._stats["write_errors"] += 1
            self.disk_full = True
            return False
        self._entries[int(i)] = [int(depth), int(dtype), [int(s) for s in shape], self._end, nbytes,
                                 zlib.crc32(payload)]
        self._end += _HEADER.size + nbytes
        self._stats["writes"] += 1
        self._stats["bytes_written"] += nbytes
        return True

    def erase(self, i: int) -> bool:
        return self._entries.pop(int(i), None) is not None

    def evict_below(self, depth: int) -> int:
        gone = [i for i, e in self._entries.items() if e[0] < depth]
        for i in gone:
            del self._entries[i]
        return len(gone)

    # ------------------------------------------------------------------ reads
    def _read(self, i: int):
        e = self._entries.get(i)
        if e is None:
            return MISSING, None
        try:
            data = os.pread(self._fd, _HEADER.size + e[4], e[3])
        except OSError:
            self._stats["reads_error"] += 1
            return ERROR, None
        if len(data) < _HEADER.size + e[4]:
            self._stats["reads_short"] += 1
            return SHORT, None
        tag, rid = _HEADER.unpack_from(data)
        data = data[_HEADER.size:]
        if tag != self.run_tag or rid != int(i) & (2**64 - 1) or zlib.crc32(data) != e[5]:
            self._stats["reads_corrupt"] += 1
            return CORRUPT, None
        self._stats["reads_ok"] += 1
        self._stats["bytes_read"] += e[4]
        return OK, data

    def read_into(self, i: int, ptr: int, capacity: int) -> int:
        return self.read_with_meta(i, ptr, capacity)[0]

    def read_with_meta(self, i: int, ptr: int, capacity: int) -> tuple:
        """``(status, (depth, dtype, shape, nbytes) of the record read, or None)``."""
        e = self._entries.get(int(i))
        status, data = self._read(int(i))
        if status == OK:
            if len(data) > capacity:  # rewritten larger since the caller sized ptr
                return MISSING, None
            ctypes.memmove(ptr, data, len(data))
            return status, (e[0], e[1], tuple(e[2]), e[4])
        return status, None

    def plan(self, batches: Sequence[Sequence[int]], slots: int = 4) -> None:
        self._plan, self._pos = [list(b) for b in batches], 0

    def cancel_plan(self) -> None:
        self._plan, self._pos = [], 0

    def next(self) -> Optional[dict]:
        """The next planned batch's cached records, read now (no read-ahead)."""
        if self._pos >= len(self._plan):
            return None
        batch, buf, records = self._pos, bytearray(), []
        self._pos += 1
        for i in self._plan[batch]:
            e = self._entries.get(i)
            if e is None:
                continue
            status, data = self._read(i)
            records.append((i, status, e[0], e[1], tuple(e[2]), len(buf), e[4]))
            if data is not None:
                buf += data
        return {"batch": batch, "slot": batch, "buffer": memoryview(buf or bytearray(1)), "records": records,
                "wait_s": 0.0}

    def release(self, slot: int) -> None:
        pass


def run_tag_of(fingerprint: str) -> int:
    """The C++ store's run tag of a fingerprint: 64-bit FNV-1a of its UTF-8 bytes."""
    h = 1469598103934665603
    for c in fingerprint.encode():
        h = ((h ^ c) * 1099511628211) & (2**64 - 1)
    return h
