"""Build the signals a policy reads (and, to record a run, all of them) from a probe batch."""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional

from torch import Tensor

from .base import Signal
from .block_drift import BlockDrift
from .displacement import ParameterDisplacement
from .probe import ProbeForward
from .probe_drift import ProbeDrift
from .probe_loss import ProbeLoss

#: every signal by name; the probe ones need a probe batch of training samples (with labels)
#: (block_drift first: its shared probe forward also captures block inputs, which the others reuse)
FACTORIES: Dict[str, Callable[[Optional[Mapping[str, Tensor]]], Signal]] = {
    "displacement": lambda probe: ParameterDisplacement(),
    "block_drift": lambda probe: BlockDrift(probe),
    "probe_drift": lambda probe: ProbeDrift(probe),
    "probe_loss": lambda probe: ProbeLoss(probe),
}
ALL_SIGNALS = tuple(FACTORIES)
NEEDS_PROBE = ("probe_drift", "probe_loss", "block_drift")


def make_signals(names: Iterable[str], probe: Optional[Mapping[str, Tensor]] = None,
                 lookahead: Optional[int] = None) -> List[Signal]:
    """One signal object per distinct name (the controller's ``grad_norm`` is built in and
    skipped); ``lookahead`` limits ``block_drift`` to the lowest active blocks (a policy's
    decision reaches no further). Raises ``ValueError`` for an unknown name or a probe signal
    without a probe."""
    out = []
    shared = ProbeForward(probe) if probe else None  # one probe forward per interval for all of them
    for name in dict.fromkeys(names):
        if name == "grad_norm":
            continue
        if name not in FACTORIES:
            raise ValueError(f"unknown signal {name!r}: available {', '.join(ALL_SIGNALS)}")
        if name in NEEDS_PROBE and not probe:
            raise ValueError(f"signal {name!r} needs a probe batch of training samples")
        out.append(BlockDrift(shared, lookahead) if name == "block_drift" else FACTORIES[name](shared))
    return out
