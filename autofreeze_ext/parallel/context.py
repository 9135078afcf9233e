"""Where this process sits in a ``torch.distributed`` job, and the few collectives the run uses.

* :func:`init_from_env` starts the process group from ``torchrun``'s environment (NCCL when
  the job runs on CUDA, gloo on CPU) and says which rank this is; a plain ``python`` run
  is a world of one and starts nothing.
* :func:`all_reduce_sum` (evaluation counts) and :func:`time_allreduce` (what the packer and
  the cost goal's planner predict communication from).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None  #: "nccl" | "gloo" | None (not distributed)
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """Started by a launcher with a process group (also a world of one under torchrun)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "cpu") -> DistContext:
    """Initialise ``torch.distributed`` from ``torchrun``'s variables (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) when the process was started by torchrun (or
    ``WORLD_SIZE > 1``); a torchrun world of one gets a process group too (DDP on one rank,
    e.g. to validate NCCL on a single GPU, or after the cost goal shed all but one worker).

    ``device="cpu"`` uses gloo; ``device="cuda"`` uses NCCL and ``cuda:LOCAL_RANK``.
    Returns a plain, non-distributed context when no launcher started the process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but no CUDA device is available")
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return DistContext(device=dev)
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, store=_attempt_store(rank, world), rank=rank, world_size=world,
                                device_id=dev if device == "cuda" else None)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                       backend=backend, device=dev)


def _attempt_store(rank: int, world: int):
    """The launcher's TCP store, with keys prefixed by torchrun's restart attempt.

    torchrun (``--standalone``, agent store) keeps one store across restarts, and the default
    process group's keys do not name the attempt: after a worker failure the restarted ranks
    could read the dead attempt's addresses and fail or hang connecting. A prefix per attempt
    keeps the attempts apart.
    """
    from datetime import timedelta

    import torch.distributed as dist

    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    timeout = timedelta(minutes=int(os.environ.get("AUTOFREEZE_DIST_TIMEOUT_MIN", "30")))
    if agent_store:
        store = dist.TCPStore(addr, port, world, is_master=False, timeout=timeout)
    else:
        store = dist.TCPStore(addr, port, world, is_master=rank == 0, timeout=timeout, multi_tenant=True)
    return dist.PrefixStore(f"autofreeze/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def all_reduce_sum(values, ctx: DistContext):
    """Sum a list of numbers over the ranks (identity in a world of one)."""
    if not ctx.distributed:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def time_allreduce(ctx: DistContext, nbytes: float, repeats: int = 3) -> float:
    """Seconds of one all-reduce of ``nbytes`` fp32 bytes over the default group (the median of
    ``repeats``, the slowest rank's): a collective, every rank must call it."""
    import time

    import torch.distributed as dist

    buf = torch.zeros(max(1, int(nbytes // 4)), dtype=torch.float32, device=ctx.device)
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        times.append(time.perf_counter() - t0)
    t = torch.tensor([sorted(times)[len(times) // 2]], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()
