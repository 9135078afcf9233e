"""AutoFreeze on ``torch.distributed``: DDP around the active suffix only.

* :func:`init_from_env` starts the process group from ``torchrun``'s environment (NCCL when
  the job runs on CUDA, gloo on CPU) and says which rank this is; a plain ``python`` run
  is a world of one and starts nothing.
* :class:`FreezingDDP` keeps a :class:`~torch.nn.parallel.DistributedDataParallel` wrapper
  around the parameters that still train. DDP fixes the set of parameters it all-reduces
  when it is built and does not support changing ``requires_grad`` afterwards, so after each
  freeze the wrapper is rebuilt (before the next forward pass) over the active parameters
  only. The parameter objects, and with them the optimizer and its state, are unchanged.
  Frozen parameters leave the all-reduce; a communication hook counts the bytes each step
  all-reduces, per frozen depth.
* The frozen prefix runs outside DDP, without autograd, through
  :class:`~autofreeze_ext.FrozenPrefixRunner` (from the activation cache when it has the
  sample); DDP sees only the suffix.

The ranks agree on every freezing decision because the
:class:`~autofreeze_ext.FreezeController` broadcasts rank 0's statistics and decision
(``process_group="auto"``). The cache is per rank: each rank caches the samples it trains on,
and :class:`~autofreeze_ext.data.ShardedBatchSampler` keeps a sample on the same rank
across epochs. A cache miss is recomputed locally; the cache takes part in no collective, so
a miss on one rank never blocks another.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

from .controller import FreezeController

log = logging.getLogger("autofreeze_ext")


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


class _CommCounter:
    """State of the counting all-reduce hook: bytes handed to all-reduce."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0


def _counting_allreduce(state: _CommCounter, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buf = bucket.buffer()
    state.bytes += buf.numel() * buf.element_size()
    state.calls += 1
    return default_hooks.allreduce_hook(None, bucket)


class FreezingDDP:
    """DDP over a model's active parameters, rebuilt whenever the controller freezes more.

    Call it like the model (``ddp(**batch)``); :attr:`module` is the current DDP instance.
    ``sync_buffers=False`` skips DDP's per-step buffer broadcast (fine for models without
    running statistics, such as BERT). ``ddp_kwargs`` go to every :class:`~torch.nn.parallel.DistributedDataParallel` built.

    :attr:`comm` maps each frozen depth to ``{"steps", "bytes", "params"}``: synchronising
    forward calls at that depth (one per optimizer step: the micro-batches of gradient
    accumulation that run under :meth:`no_sync` are not counted), bytes DDP handed to
    all-reduce while at it (counted in a communication hook, so what was sent, not an
    estimate), and the number of parameters all-reduced.
    """

    def __init__(self, model: nn.Module, controller: FreezeController, device: Optional[torch.device] = None,
                 sync_buffers: bool = True, **ddp_kwargs) -> None:
        if not sync_buffers:  # models without running statistics (BERT) need no buffer broadcast per step
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP

            new = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
            ddp_kwargs["forward_sync_buffers" if new else "broadcast_buffers"] = False
        self.model = model
        self.controller = controller
        self.device = device
        self.ddp_kwargs = ddp_kwargs
        self.comm: Dict[int, dict] = {}
        self.rebuilds = 0
        self.module: Optional[nn.Module] = None
        self._depth = -1
        self._counter = _CommCounter()
        self._accumulating = False  # inside no_sync(): a micro-batch that does not all-reduce
        self._build()

    def _build(self) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        depth = self.controller.frozen_depth
        active = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if active == 0:
            self.module = None  # nothing trains: nothing to all-reduce
        else:
            ids = None if self.device is None or self.device.type == "cpu" else [self.device]
            self.module = DDP(self.model, device_ids=ids, **self.ddp_kwargs)
            self._counter = _CommCounter()
            self.module.register_comm_hook(self._counter, _counting_allreduce)
        if self._depth >= 0:
            self.rebuilds += 1
            log.info("DDP rebuilt over the active suffix: depth %d, %d parameters all-reduced", depth, active)
        self._depth = depth
        self.comm.setdefault(depth, {"steps": 0, "bytes": 0, "params": active})

    def _sync_counter(self) -> None:
        rec = self.comm[self._depth]
        rec["bytes"] += self._counter.bytes
        self._counter.bytes = 0

    def _refresh(self) -> None:
        self._sync_counter()
        if self.controller.frozen_depth != self._depth:
            self._build()

    def no_sync(self):
        """DDP's ``no_sync`` on the current wrapper (rebuilt first if blocks froze): gradient
        accumulation over micro-batches all-reduces only after the last one."""
        import contextlib

        self._refresh()

        @contextlib.contextmanager
        def accumulating():
            self._accumulating = True
            try:
                with self.module.no_sync() if self.module is not None else contextlib.nullcontext():
                    yield
            finally:
                self._accumulating = False
        return accumulating()

    def __call__(self, *args, **kwargs):
        self._refresh()
        if not self._accumulating:
            self.comm[self._depth]["steps"] += 1
        return (self.module or self.model)(*args, **kwargs)

    def comm_report(self) -> Dict[int, dict]:
        """Per frozen depth: steps, all-reduced bytes, bytes per step, parameters."""
        self._sync_counter()
        return {d: {**r, "bytes_per_step": r["bytes"] / r["steps"] if r["steps"] else 0.0}
                for d, r in sorted(self.comm.items())}
