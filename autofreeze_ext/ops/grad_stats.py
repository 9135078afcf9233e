"""``autofreeze::grad_stats``: fused gradient accumulation and per-block norms.

One pass over a list of tensors (multi-tensor apply): adds each gradient into its fp32
accumulator and reduces per-block L1 or L2 norms of the accumulated values, optionally
zeroing the accumulators in the same pass. Schema::

    grad_stats(Tensor(a!)[] accs, Tensor[] grads, int[] block_ids, int num_blocks,
               str norm, bool compute_norms, bool zero_after) -> Tensor

``grads`` may be empty (norms of the accumulators only). Returns float32 ``[num_blocks]``
norms on the accumulators' device (zeros when ``compute_norms`` is False).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

NORMS = {"l1": 1, "l2": 2}
GRAD_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class Meta(NamedTuple):
    acc_ptrs: List[int]
    grad_ptrs: List[int]
    numels: List[int]
    grad_dtypes: List[int]

    def kernel_args(self, block_ids: List[int], num_blocks: int, sums: Tensor, norm: str, compute_norms: bool,
                    zero_after: bool) -> tuple:
        """Positional arguments of ``_C.grad_stats_{cpu,cuda}`` before the last (threads/stream)."""
        return (self.acc_ptrs, self.grad_ptrs, self.numels, self.grad_dtypes, block_ids, num_blocks,
                sums.data_ptr(), NORMS[norm], compute_norms, zero_after)


def _fail(msg: str) -> None:
    raise ValueError(f"grad_stats: {msg}")


def validate(accs: Sequence[Tensor], grads: Sequence[Tensor], block_ids: Sequence[int], num_blocks: int,
             norm: str) -> Meta:
    """Checks shared by every backend, fused with collecting what the kernels need (one pass:
    this runs every training step). Raises ``ValueError`` naming the op and the bad value."""
    if norm not in NORMS:
        _fail(f"norm must be 'l1' or 'l2', got {norm!r}")
    if num_blocks < 0:
        _fail(f"num_blocks must be >= 0, got {num_blocks}")
    n = len(accs)
    if len(block_ids) != n:
        _fail(f"{len(block_ids)} block ids for {n} accumulators")
    if len(grads) not in (0, n):
        _fail(f"{len(grads)} gradients for {n} accumulators (pass all or none)")
    meta = Meta([], [], [], [])
    if n == 0:
        return meta
    device = accs[0].device
    f32, strided = torch.float32, torch.strided
    for i in range(n):
        a, b = accs[i], block_ids[i]
        if a.dtype is not f32:
            _fail(f"accumulator {i} is {a.dtype}, must be float32")
        if not a.is_contiguous():
            _fail(f"accumulator {i} is not contiguous")
        if a.device != device:
            _fail(f"accumulator {i} is on {a.device}, accumulator 0 on {device}")
        if not 0 <= b < num_blocks:
            _fail(f"block id {b} of tensor {i} outside [0, {num_blocks})")
        meta.acc_ptrs.append(a.data_ptr())
        meta.numels.append(a.numel())
    if grads:
        for i in range(n):
            g = grads[i]
            code = GRAD_DTYPES.get(g.dtype)
            if code is None:
                _fail(f"gradient {i} is {g.dtype}; supported: float32, float16, bfloat16")
            if g.layout is not strided:
                _fail(f"gradient {i} is {g.layout}; only dense gradients are supported")
            if not g.is_contiguous():
                _fail(f"gradient {i} is not contiguous; pass g.contiguous()")
            if g.numel() != meta.numels[i]:
                _fail(f"gradient {i} has {g.numel()} elements, its accumulator {meta.numels[i]}")
            if g.device != device:
                _fail(f"gradient {i} is on {g.device}, accumulators on {device}")
            meta.grad_ptrs.append(g.data_ptr())
            meta.grad_dtypes.append(code)
    return meta


def finish_norms(sums: Tensor, norm: str) -> Tensor:
    """fp64 per-block sums (|x| or x^2) -> float32 norms."""
    return (sums.sqrt() if norm == "l2" else sums).to(torch.float32)


def reference_grad_stats(accs: List[Tensor], grads: List[Tensor], block_ids: List[int], num_blocks: int,
                         norm: str, compute_norms: bool, zero_after: bool) -> Tensor:
    """Pure-PyTorch implementation: the fallback everywhere and the tests' oracle.

    Shape-agnostic like the kernels: an accumulator and its gradient only need the same
    number of elements (a flat fp32 view may accumulate a 2-D weight's gradient)."""
    validate(accs, grads, block_ids, num_blocks, norm)
    device = accs[0].device if accs else torch.device("cpu")
    sums = torch.zeros(num_blocks, dtype=torch.float64, device=device)
    if grads:
        for a, g in zip(accs, grads):
            a.view(-1).add_(g.reshape(-1))
    if compute_norms and accs:
        ord_ = 2 if norm == "l2" else 1
        per_tensor = torch.stack([torch.linalg.vector_norm(a, ord_, dtype=torch.float64) for a in accs])
        if norm == "l2":
            per_tensor = per_tensor.square()
        sums.index_add_(0, torch.tensor(block_ids, dtype=torch.long, device=device), per_tensor)
    if zero_after:
        for a in accs:
            a.zero_()
    return finish_norms(sums, norm)


@torch.library.custom_op("autofreeze::grad_stats", mutates_args=("accs",))
def _grad_stats_op(accs: List[Tensor], grads: List[Tensor], block_ids: List[int], num_blocks: int, norm: str,
                   compute_norms: bool, zero_after: bool) -> Tensor:
    # Default implementation (any device); the compiled kernels are registered for CPU and CUDA
    # below (_register_compiled).
    return reference_grad_stats(accs, grads, block_ids, num_blocks, norm, compute_norms, zero_after)


@_grad_stats_op.register_fake
def _grad_stats_fake(accs, grads, block_ids, num_blocks, norm, compute_norms, zero_after):
    device = accs[0].device if accs else torch.device("cpu")
    return torch.empty(num_blocks, dtype=torch.float32, device=device)


def grad_stats(accs: Sequence[Tensor], grads: Optional[Sequence[Tensor]] = None,
               block_ids: Optional[Sequence[int]] = None, num_blocks: Optional[int] = None, *,
               norm: str = "l2", compute_norms: bool = True, zero_after: bool = False) -> Tensor:
    """Add ``grads`` into ``accs`` and return per-block norms of the accumulated values.

    Args:
        accs: float32 contiguous accumulators (modified in place).
        grads: gradients matching ``accs`` element for element (fp32, fp16 or bf16), or None
            to only take norms of the accumulators.
        block_ids: block index of each tensor (default: each tensor its own block).
        num_blocks: number of blocks (default: ``max(block_ids) + 1``).
        norm: ``"l2"`` or ``"l1"``.
        compute_norms: reduce the norms (otherwise only accumulate; zeros are returned).
        zero_after: zero the accumulators after reading them, in the same pass.

    Returns:
        float32 tensor ``[num_blocks]`` on the accumulators' device.
    """
    accs = list(accs)
    grads = [] if grads is None else list(grads)
    block_ids = list(range(len(accs))) if block_ids is None else [int(b) for b in block_ids]
    if num_blocks is None:
        num_blocks = (max(block_ids) + 1) if block_ids else 0
    if not accs:
        validate(accs, grads, block_ids, num_blocks, norm)
        return torch.zeros(num_blocks, dtype=torch.float32)
    return torch.ops.autofreeze.grad_stats(accs, grads, block_ids, num_blocks, norm, compute_norms, zero_after)


def _grad_stats_cpu(accs: List[Tensor], grads: List[Tensor], block_ids: List[int], num_blocks: int, norm: str,
                    compute_norms: bool, zero_after: bool) -> Tensor:
    """The C++ CPU kernel (``autofreeze_ext._C``)."""
    from .._backend import _C

    meta = validate(accs, grads, block_ids, num_blocks, norm)
    sums = torch.zeros(num_blocks, dtype=torch.float64)
    _C.grad_stats_cpu(*meta.kernel_args(block_ids, num_blocks, sums, norm, compute_norms, zero_after),
                      torch.get_num_threads())
    return finish_norms(sums, norm)


def _grad_stats_cuda(accs: List[Tensor], grads: List[Tensor], block_ids: List[int], num_blocks: int, norm: str,
                     compute_norms: bool, zero_after: bool) -> Tensor:
    """The CUDA kernel (``autofreeze_ext._C`` built with nvcc). The compiled core links the CUDA
    runtime statically and receives torch's current stream, so it runs in stream order with
    the surrounding PyTorch work."""
    from .._backend import _C

    meta = validate(accs, grads, block_ids, num_blocks, norm)
    device = accs[0].device
    sums = torch.zeros(num_blocks, dtype=torch.float64, device=device)
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _C.grad_stats_cuda(*meta.kernel_args(block_ids, num_blocks, sums, norm, compute_norms, zero_after), stream)
    return finish_norms(sums, norm)


def _register_compiled() -> None:
    """The compiled kernels this machine has, for the CPU and CUDA dispatch keys (the op's own
    body, the reference, serves every other case)."""
    from .. import _backend

    if not _backend.compiled():
        return
    _grad_stats_op.register_kernel("cpu")(_grad_stats_cpu)
    if _backend.compiled_with_cuda():
        _grad_stats_op.register_kernel("cuda")(_grad_stats_cuda)


_register_compiled()
