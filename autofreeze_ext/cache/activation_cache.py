"""ActivationCache: the frozen prefix's output per training sample, in RAM and on disk.

Once blocks ``1..L`` are frozen (and run in eval mode) the output of block ``L`` for a sample
never changes, so later epochs can read it instead of recomputing it. Entries are keyed by
the dataset's sample index and carry the depth they were computed at; an entry of depth
``d < L`` is still useful (only blocks ``d+1..L`` then run) and is superseded when rewritten.

Tiers: a RAM tier (``memory_budget`` bytes) and, when ``path`` is given, a disk tier served by
the C++ record store (``autofreeze_ext._C.RecordStore``: aligned records with CRC32C in a few
segment files, io_uring + O_DIRECT with a pread thread pool and buffered fallbacks, a
background writer, a prefetch ring that reads the epoch's planned batches ahead of the
training loop). Anything the disk tier cannot serve intact (checksum, truncation, deleted
segment, I/O error) is a miss: the caller recomputes; disk full stops writing, training goes on.

Example::

    cache = ActivationCache("/scratch/af-cache", memory_budget="2GiB", disk_budget="50GiB",
                            fingerprint={"model": "minilm", "max_length": 64})
    cache.put([3, 7], depth=2, outputs=h)          # h: [2, ...] block-2 outputs of samples 3, 7
    hits = cache.get([3, 7, 9])                    # {3: (2, tensor), 7: (2, tensor)}
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .._backend import _C, _C_ERROR
from .py_store import PyRecordStore

log = logging.getLogger("autofreeze_ext")

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
           torch.int8, torch.int16, torch.bool]
_DTYPE_CODE = {d: i for i, d in enumerate(_DTYPES)}
_STATUS = {0: "ok", 1: "corrupt", 2: "short read", 3: "I/O error", 4: "missing"}
_MISSING = 4

Bytes = Union[int, str, None]


class CacheError(OSError):
    """The cache cannot be used as configured (e.g. its path is not writable)."""


class CacheInUse(CacheError):
    """Another live process holds the cache's folder (two runs must not share one)."""


def parse_bytes(v: Bytes) -> Optional[int]:
    """``1024``, ``"512MiB"``, ``"2G"``, ``"1.5GB"`` -> bytes; ``None`` -> None (no limit)."""
    if v is None or isinstance(v, int):
        return v
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b?)\s*", str(v).lower())
    if not m:
        raise ValueError(f"cannot read a byte size from {v!r} (examples: 1048576, 512MiB, 2G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


#: the RAM tier's default budget (the CLI's --cache-memory, the integrations' cache_memory)
DEFAULT_MEMORY = "2GiB"


#: the counters :func:`with_rates` derives from the others (recomputed, never summed), and those it reads
RATES = ("hit_rate", "bytes_per_row")
_COUNTED = frozenset({"hits_ram", "hits_disk", "misses", "puts_ram", "puts_disk", "bytes_put"})


def with_rates(counts: dict) -> dict:
    """``counts`` (hits, misses, puts, bytes put) with the rates derived from them: the share of
    lookups that hit, and the payload of a stored row."""
    n = counts["hits_ram"] + counts["hits_disk"] + counts["misses"]
    counts["hit_rate"] = (counts["hits_ram"] + counts["hits_disk"]) / n if n else 0.0
    puts = counts["puts_ram"] + counts["puts_disk"]
    counts["bytes_per_row"] = counts["bytes_put"] / puts if puts else 0.0
    return counts


def add_counts(before: Optional[dict], now: dict) -> dict:
    """The counts of a run resumed across processes: ``now`` (this process's) plus ``before``
    (what the checkpoint kept of the processes before it), every count summed (the disk tier's
    nested ones too), the rates recomputed from the sums. ``before`` None or empty: ``now``."""
    if not before:
        return now
    out = _summed(before, now)
    return with_rates(out) if _COUNTED <= set(out) else out


def _summed(before: dict, now: dict) -> dict:
    out = dict(now)
    for k, v in before.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _summed(v, out[k])
        elif k not in RATES and isinstance(v, (int, float)) and isinstance(out[k], (int, float)):
            out[k] = out[k] + v
    return out


def fingerprint_of(obj) -> str:
    """A stable string for what produced the cache (model identity, input settings...)."""
    if obj is None:
        return ""
    if isinstance(obj, str):
        return obj
    return json.dumps(obj, sort_keys=True, default=str)


class ActivationCache:
    """Per-sample cache of frozen-prefix outputs with a RAM tier and an optional disk tier.

    Args:
        path: folder of the disk tier (created if needed); ``None`` for RAM only.
        memory_budget: bytes of the RAM tier (``int`` or ``"2GiB"``); 0 disables it.
        disk_budget: bytes of the disk tier; ``None`` for no limit but the disk's.
        device: where :meth:`get` returns tensors (default CPU). On CUDA the disk tier's
            prefetch slots are page-locked and copied on a side stream.
        fingerprint: what produced the cache (dict or str). A disk cache written with another
            fingerprint is discarded at open; a matching one is reused after a restart.
        io_backend: ``"auto"`` (io_uring, else thread pool), ``"uring"`` or ``"threads"``.
        direct: ``"auto"`` (O_DIRECT when the file system takes it), ``"on"`` or ``"off"``.
        queue_depth: reads in flight. prefetch_slots: batches read ahead.

    Raises:
        CacheError: the path cannot be created or written.
    """

    def __init__(self, path: Optional[str] = None, memory_budget: Bytes = DEFAULT_MEMORY, disk_budget: Bytes = None,
                 device: Union[str, torch.device, None] = None, fingerprint=None, io_backend: str = "auto",
                 direct: str = "auto", queue_depth: int = 32, prefetch_slots: int = 4,
                 segment_bytes: Bytes = "1GiB", write_queue_bytes: Bytes = "256MiB") -> None:
        self.memory_budget = parse_bytes(memory_budget) or 0
        self.disk_budget = parse_bytes(disk_budget)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.fingerprint = fingerprint_of(fingerprint)
        self.prefetch_slots = max(2, int(prefetch_slots))
        self._ram: "OrderedDict[int, Tuple[int, torch.Tensor]]" = OrderedDict()
        self._ram_bytes = 0
        self._store = None
        self._plan: List[List[int]] = []
        self._plan_pos = 0
        self._held: List[Tuple[int, object]] = []  # (slot, cuda event) awaiting release
        self._copy_stream = None
        self._warned = set()
        self.path = path
        self.stats = {"hits_ram": 0, "hits_disk": 0, "misses": 0, "failed_reads": 0, "puts_ram": 0,
                      "puts_disk": 0, "puts_rejected": 0, "bytes_put": 0, "read_s": 0.0, "write_s": 0.0, "prefetched": 0}
        self.disk_note = "no disk tier"
        self._lock = None
        if path is not None:
            env_backend = os.environ.get("AUTOFREEZE_IO_BACKEND")
            store = _C.RecordStore if _C is not None else PyRecordStore
            try:
                os.makedirs(path, exist_ok=True)
                self._lock = _lock_folder(path)
                self._store = store(
                    path, backend=env_backend or io_backend, direct=direct, queue_depth=int(queue_depth),
                    segment_bytes=parse_bytes(segment_bytes), write_queue_bytes=parse_bytes(write_queue_bytes),
                    disk_budget=self.disk_budget or 0, fingerprint=self.fingerprint,
                    pin=self.device.type == "cuda")
            except CacheInUse:
                raise
            except (OSError, RuntimeError) as exc:
                self._unlock()
                raise CacheError(f"cannot use {path} as an activation cache: {exc}") from exc
            if _C is None:
                self._warn_once("nocore", f"autofreeze_ext._C is not in use ({_C_ERROR}): the cache at {path} uses "
                                          "the pure-Python record store (synchronous reads, no io_uring or O_DIRECT)")
            self.disk_note = self._store.info()["opened"]

    # ------------------------------------------------------------------ queries
    def info(self) -> dict:
        """Tiers, budgets and the disk tier's I/O backend (io_uring/threads, O_DIRECT, ...)."""
        d = {"memory_budget": self.memory_budget, "ram_entries": len(self._ram), "ram_bytes": self._ram_bytes,
             "disk": self.disk_note, "path": self.path}
        if self._store is not None:
            d.update({"disk_" + k: v for k, v in self._store.info().items()})
            d["disk_entries"] = len(self._store)
            d["disk_bytes"] = self._store.live_bytes
            d["disk_budget"] = self.disk_budget
            d["disk_full"] = self._store.disk_full
        return d

    def counters(self) -> dict:
        """Hit/miss/put counters, seconds spent reading/writing, and the disk tier's own stats."""
        out = with_rates(dict(self.stats))
        if self._store is not None:
            out["disk"] = self._store.stats()
        return out

    def depths(self, indices: Iterable[int]) -> List[int]:
        """Cached depth of each sample (0: not cached)."""
        idx = [int(i) for i in indices]
        disk = self._store.depths(idx) if self._store is not None else [-1] * len(idx)
        out = []
        for i, dd in zip(idx, disk):
            r = self._ram.get(i)
            out.append(r[0] if r is not None else max(dd, 0))
        return out

    def __len__(self) -> int:
        return len(self._ram) + (len(self._store) if self._store is not None else 0)

    # ------------------------------------------------------------------ writes
    def put(self, indices: Sequence[int], depth: int, outputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> int:
        """Store ``outputs[k]`` as sample ``indices[k]``'s block-``depth`` output; returns how many
        were stored. ``outputs``: one tensor ``[n, ...]`` or ``n`` tensors, whose shapes may differ
        (rows without their padding). Older entries of the same samples are superseded. Never
        raises for a full disk: those samples stay uncached."""
        if depth < 1:
            raise ValueError("depth must be >= 1 (the number of frozen blocks the output has passed)")
        if len(outputs) != len(indices):
            raise ValueError(f"{len(indices)} indices for {len(outputs)} outputs")
        t0 = time.perf_counter()
        host = _to_host(outputs)
        stored = 0
        for k, i in enumerate(indices):
            i = int(i)
            row = host[k]
            self._drop(i)
            nbytes = row.numel() * row.element_size()
            if self._ram_bytes + nbytes <= self.memory_budget:
                self._ram[i] = (depth, row.clone())
                self._ram_bytes += nbytes
                self.stats["puts_ram"] += 1
                self.stats["bytes_put"] += nbytes
                stored += 1
            elif self._store is not None and row.dtype in _DTYPE_CODE and self._store.put(
                    i, depth, _DTYPE_CODE[row.dtype], list(row.shape), row.data_ptr(), nbytes):
                self.stats["puts_disk"] += 1
                self.stats["bytes_put"] += nbytes
                stored += 1
            else:
                self.stats["puts_rejected"] += 1
                if self._store is not None and self._store.disk_full:
                    self._warn_once("full", f"activation cache at {self.path}: disk full, no further "
                                            "samples are cached (training continues by recomputation)")
        self.stats["write_s"] += time.perf_counter() - t0
        return stored

    def _drop(self, i: int) -> None:
        old = self._ram.pop(i, None)
        if old is not None:
            self._ram_bytes -= old[1].numel() * old[1].element_size()
        if self._store is not None:
            self._store.erase(i)

    def evict_below(self, depth: int) -> int:
        """Drop entries computed at fewer than ``depth`` frozen blocks; returns how many."""
        gone = [i for i, (d, _) in self._ram.items() if d < depth]
        for i in gone:
            self._drop(i)
        n = len(gone)
        if self._store is not None:
            n += self._store.evict_below(depth)
        return n

    def clear(self) -> None:
        self._ram.clear()
        self._ram_bytes = 0
        if self._store is not None:
            self._store.evict_below(1 << 30)

    # ------------------------------------------------------------------ reads
    def plan_epoch(self, batches: Sequence[Sequence[int]]) -> None:
        """Tell the disk tier the order in which :meth:`get` will ask for samples this epoch;
        it then reads ahead of the training loop. Batches must be requested in this order."""
        self._release_held(wait=True)
        self._plan = [[int(i) for i in b] for b in batches]
        self._plan_pos = 0
        if self._store is not None:
            self._store.plan(self._plan, self.prefetch_slots)

    def get(self, indices: Sequence[int]) -> Dict[int, Tuple[int, torch.Tensor]]:
        """Cached entries of these samples as ``{index: (depth, tensor)}``; absent ones are misses."""
        idx = [int(i) for i in indices]
        out: Dict[int, Tuple[int, torch.Tensor]] = {}
        for i in idx:
            r = self._ram.get(i)
            if r is not None:
                out[i] = (r[0], r[1] if self.device.type == "cpu" else r[1].to(self.device, non_blocking=True))
        self.stats["hits_ram"] += len(out)
        rest = [i for i in idx if i not in out]
        if rest and self._store is not None:
            t0 = time.perf_counter()
            self._release_held(wait=False)
            got = self._from_prefetch(idx, rest)
            for i in rest:
                if i in got or i in out:
                    continue
                meta = self._store.meta(i)
                if meta is None:
                    continue
                _, code, shape, nbytes = meta
                t = torch.empty(shape, dtype=_DTYPES[code])
                status, read = self._store.read_with_meta(i, t.data_ptr(), nbytes)
                if status == _MISSING:  # erased or rewritten larger since meta(): recomputed
                    continue
                if status != 0:
                    self._failed(i, status)
                elif (read[1], tuple(read[2]), read[3]) == (code, tuple(shape), nbytes):
                    # the depth of the record actually read (it may have been rewritten since meta())
                    got[i] = (read[0], t.to(self.device) if self.device.type != "cpu" else t)
            out.update(got)
            self.stats["hits_disk"] += len(got)
            self.stats["read_s"] += time.perf_counter() - t0
        self.stats["misses"] += len(idx) - len(out)
        return out

    def _from_prefetch(self, requested: List[int], rest: List[int]) -> Dict[int, Tuple[int, torch.Tensor]]:
        got: Dict[int, Tuple[int, torch.Tensor]] = {}
        if self._plan_pos >= len(self._plan):
            return got
        want_set = set(requested)
        ahead = next((k for k in range(self._plan_pos, len(self._plan)) if set(self._plan[k]) == want_set), None)
        if ahead is None:
            # Not a planned batch (the loop changed): stop prefetching, read synchronously.
            self._warn_once("plan", "activation cache: a batch outside the planned order was requested; "
                                    "prefetching stops for this epoch")
            self._store.cancel_plan()
            self._plan = []
            return got
        while self._plan_pos < ahead:  # planned batches the caller did not ask the cache for
            view = self._store.next()
            self._plan_pos += 1
            if view is not None:
                self._store.release(view["slot"])
        self._plan_pos += 1
        view = self._store.next()
        if view is None:
            return got
        want = set(rest)
        buf = torch.frombuffer(view["buffer"], dtype=torch.uint8)
        pinned = self.device.type == "cuda"
        if pinned and self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device=self.device)
        ctx = torch.cuda.stream(self._copy_stream) if pinned else _nullcontext()
        with ctx:
            for sid, status, depth, code, shape, off, nbytes in view["records"]:
                if sid not in want:
                    continue
                if status != 0:
                    self._failed(sid, status)
                    continue
                t = buf[off:off + nbytes].view(_DTYPES[code]).view(shape)
                t = t.to(self.device, non_blocking=True) if pinned else t.clone()
                got[sid] = (depth, t)
        self.stats["prefetched"] += len(got)
        if pinned:
            ev = torch.cuda.Event()
            ev.record(self._copy_stream)
            torch.cuda.current_stream(self.device).wait_event(ev)
            for _, t in got.values():
                t.record_stream(torch.cuda.current_stream(self.device))
            self._held.append((view["slot"], ev))
        else:
            self._store.release(view["slot"])
        return got

    def _release_held(self, wait: bool) -> None:
        keep = []
        for slot, ev in self._held:
            if wait:
                ev.synchronize()
            if wait or ev.query():
                self._store.release(slot)
            else:
                keep.append((slot, ev))
        self._held = keep

    def _failed(self, i: int, status: int) -> None:
        self.stats["failed_reads"] += 1
        self._store.erase(i)
        self._warn_once("read", f"activation cache at {self.path}: a record failed to read "
                                f"({_STATUS.get(status, status)}); such samples are recomputed")

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)

    # ------------------------------------------------------------------ cost model input
    def read_seconds_per_sample(self, sample_bytes: int, probe: int = 16) -> Tuple[float, str]:
        """Measured seconds to serve one sample of ``sample_bytes`` from the tier where new entries
        would go now (RAM while the budget lasts, else disk), and that tier's name."""
        if self._ram_bytes + sample_bytes <= self.memory_budget:
            src = torch.empty(probe, max(1, sample_bytes // 4))
            t0 = time.perf_counter()
            torch.stack([r.clone() for r in src])
            return (time.perf_counter() - t0) / probe, "ram"
        if self._store is None or self._store.disk_full:
            return float("inf"), "none"
        row = torch.zeros(max(1, sample_bytes // 4))
        ids = [-(1 << 62) - k for k in range(probe)]  # scratch ids, never sample indices
        for i in ids:
            self._store.put(i, 1, 0, list(row.shape), row.data_ptr(), row.numel() * 4)
        self._store.flush()
        t = torch.empty_like(row)
        t0 = time.perf_counter()
        n = sum(self._store.read_into(i, t.data_ptr(), t.numel() * 4) == 0 for i in ids)
        dt = time.perf_counter() - t0
        for i in ids:
            self._store.erase(i)
        return (dt / n if n else float("inf")), "disk"

    # ------------------------------------------------------------------ lifetime
    def flush(self) -> None:
        """Write pending records and the index (atomically) so a restarted run reuses them."""
        if self._store is not None:
            self._release_held(wait=True)
            self._store.flush()

    def close(self) -> None:
        if self._store is not None:
            try:
                self.flush()
            finally:
                self._store.close()
                self._store = None
                self._unlock()

    def _unlock(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # closing the descriptor releases the lock (a crash releases it too)
            self._lock = None

    def __enter__(self) -> "ActivationCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._store is not None:
                self._store.close()
        except Exception:
            pass


def _lock_folder(path: str):
    """An exclusive advisory lock on ``path/.lock`` held while the cache is open (released by the
    kernel when the process dies); :class:`CacheInUse` when another process holds it."""
    import fcntl

    f = open(os.path.join(path, ".lock"), "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise CacheInUse(f"the activation cache folder {path} is in use by {holder}: two runs sharing one folder "
                         "would read each other's records; give each run its own --cache-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()}")
    f.flush()
    return f


def _to_host(outputs) -> List[torch.Tensor]:
    """Contiguous CPU rows, with one device-to-host copy for rows that are views of one tensor."""
    if torch.is_tensor(outputs):
        return list(outputs.detach().to("cpu").contiguous().unbind(0))
    rows = [r.detach() for r in outputs]
    if rows and rows[0].device.type != "cpu":
        flat = torch.cat([r.reshape(-1) for r in rows]).to("cpu")
        return [v.view(r.shape) for v, r in zip(flat.split([r.numel() for r in rows]), rows)]
    return [r.contiguous() for r in rows]


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
