"""C++ CPU kernels (``autofreeze_ext._C``), registered for the CPU dispatch key."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .._backend import _C
from ..ops.grad_stats import _grad_stats_op, finish_norms, validate


def grad_stats_cpu(accs: List[Tensor], grads: List[Tensor], block_ids: List[int], num_blocks: int, norm: str,
                   compute_norms: bool, zero_after: bool) -> Tensor:
    meta = validate(accs, grads, block_ids, num_blocks, norm)
    sums = torch.zeros(num_blocks, dtype=torch.float64)
    _C.grad_stats_cpu(*meta.kernel_args(block_ids, num_blocks, sums, norm, compute_norms, zero_after),
                      torch.get_num_threads())
    return finish_norms(sums, norm)


def register() -> None:
    _grad_stats_op.register_kernel("cpu")(grad_stats_cpu)
