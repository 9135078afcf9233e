"""Custom ops, each defined once with ``torch.library`` and implemented per backend.

``autofreeze_ext/backends/{default,cpu,cuda}.py`` hold the implementations; importing this
package defines the ops and registers every implementation available on this machine.
"""
from .grad_stats import NORMS, grad_stats, reference_grad_stats

__all__ = ["NORMS", "grad_stats", "reference_grad_stats"]
