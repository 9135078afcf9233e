"""The one clock that decisions read: on a CUDA device it synchronises first.

CUDA kernels run asynchronously: ``time.perf_counter()`` right after a forward pass measures
how long it took to *queue* the work. Every timing a decision uses (step phases, the cache's
read-vs-recompute decision, the batch packer, the cost planner) reads :func:`now`, which waits
for the device's queued work first (one ``torch.cuda.synchronize`` per reading; a CPU run pays
nothing)."""
from __future__ import annotations

import time
from typing import Optional

import torch


def now(device: Optional[torch.device] = None) -> float:
    """``time.perf_counter()`` after the work queued on ``device`` (a CUDA device) finished."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
