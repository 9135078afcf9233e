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
from .val_slice import ValSlice

#: every signal by name; the probe ones need a probe batch of training samples (with labels)
#: (block_drift first: its shared probe forward also captures block inputs, which the others reuse)
FACTORIES: Dict[str, Callable[[Optional[Mapping[str, Tensor]]], Signal]] = {
    "displacement": lambda probe: ParameterDisplacement(),
    "block_drift": lambda probe: BlockDrift(probe),
    "probe_drift": lambda probe: ProbeDrift(probe),
    "probe_loss": lambda probe: ProbeLoss(probe),
}
#: every signal by name (``val_slice`` needs a validation slice instead of a probe batch)
ALL_SIGNALS = (*FACTORIES, "val_slice")
NEEDS_PROBE = ("probe_drift", "probe_loss", "block_drift")
#: training rows in the probe batch those signals read (the CLI's --probe-samples, the integrations' probe_samples)
PROBE_SAMPLES = 64


def make_signals(names: Iterable[str], probe: Optional[Mapping[str, Tensor]] = None,
                 lookahead: Optional[int] = None, val: Optional[Mapping[str, Tensor]] = None,
                 metric: Optional[str] = None) -> List[Signal]:
    """One signal object per distinct name (the controller's ``grad_norm`` is built in and
    skipped); ``lookahead`` limits ``block_drift`` to the lowest active blocks (a policy's
    decision reaches no further); ``val`` (encoded rows with labels) and ``metric`` make
    ``val_slice``. Raises ``ValueError`` for an unknown name, a probe signal without a probe
    or ``val_slice`` without a slice."""
    out = []
    shared = ProbeForward(probe) if probe else None  # one probe forward per interval for all of them
    for name in dict.fromkeys(names):
        if name == "grad_norm":
            continue
        if name == "val_slice":
            if val is None:
                raise ValueError("signal 'val_slice' needs a validation slice (encoded rows with labels)")
            out.append(ValSlice(val, metric))
            continue
        if name not in FACTORIES:
            raise ValueError(f"unknown signal {name!r}: available {', '.join(ALL_SIGNALS)}")
        if name in NEEDS_PROBE and not probe:
            raise ValueError(f"signal {name!r} needs a probe batch of training samples")
        out.append(BlockDrift(shared, lookahead) if name == "block_drift" else FACTORIES[name](shared))
    return out
