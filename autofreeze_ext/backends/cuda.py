"""CUDA kernels (``autofreeze_ext._C`` built with nvcc), registered for the CUDA dispatch key.

The compiled core links the CUDA runtime statically and receives torch's current stream
handle, so it runs in stream order with the surrounding PyTorch work.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .._backend import _C
from ..ops.grad_stats import _grad_stats_op, finish_norms, validate


def grad_stats_cuda(accs: List[Tensor], grads: List[Tensor], block_ids: List[int], num_blocks: int, norm: str,
                    compute_norms: bool, zero_after: bool) -> Tensor:
    meta = validate(accs, grads, block_ids, num_blocks, norm)
    device = accs[0].device
    sums = torch.zeros(num_blocks, dtype=torch.float64, device=device)
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _C.grad_stats_cuda(*meta.kernel_args(block_ids, num_blocks, sums, norm, compute_norms, zero_after), stream)
    return finish_norms(sums, norm)


def register() -> None:
    _grad_stats_op.register_kernel("cuda")(grad_stats_cuda)
