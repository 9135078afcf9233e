"""AutoFreeze on ``torch.distributed``: DDP around the active suffix only.

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
and :class:`~autofreeze_ext.samplers.ShardedBatchSampler` keeps a sample on the same rank
across epochs. A cache miss is recomputed locally; the cache takes part in no collective, so
a miss on one rank never blocks another.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Dict, Optional

import torch
from torch import nn

if TYPE_CHECKING:  # the controller imports parallel.rank_sync: no import at run time
    from ..freezing.controller import FreezeController


log = logging.getLogger("autofreeze_ext")


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

    def __init__(self, model: nn.Module, controller: "FreezeController", device: Optional[torch.device] = None,
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
