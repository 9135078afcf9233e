"""Data parallelism on ``torch.distributed``: the job's context and collectives
(:mod:`.context`) and DDP around the active suffix (:mod:`.ddp`)."""
from .context import DistContext, all_reduce_sum, init_from_env, time_allreduce
from .ddp import FreezingDDP

__all__ = ["DistContext", "FreezingDDP", "all_reduce_sum", "init_from_env", "time_allreduce"]
