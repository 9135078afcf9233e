"""Custom ops, each defined once with ``torch.library``, with its pure-PyTorch reference as the
op's default body and the compiled kernels (``autofreeze_ext._C``) registered for the CPU and
CUDA dispatch keys in the same module (``grad_stats.py``). Importing this package defines the
ops and registers every kernel this machine has.
"""
from .grad_stats import NORMS, grad_stats, reference_grad_stats

__all__ = ["NORMS", "grad_stats", "reference_grad_stats"]
