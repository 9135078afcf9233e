"""How much a block's *own* function changed: its previous weights against its current ones, on
the same current input (no cascade from blocks below)."""
from __future__ import annotations

import copy
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .base import Signal
from .probe import ProbeForward, as_forward
from .probe_drift import linear_cka


class BlockDrift(Signal):
    """``1 - CKA(block_now(x), block_then(x))`` per block, where ``x`` is the block's input on a
    fixed probe batch of training samples *now* and ``block_then`` is the block as it was at
    the previous interval end.

    :class:`ProbeDrift` compares a block's outputs at two interval ends, so it also moves when
    only the blocks below it change, and falls as soon as they freeze: freezing block ``b``
    makes block ``b + 1`` look stable, which freezes it at the next interval, and so on (a
    cascade measured in BENCHMARKS.md). Holding the input fixed measures the block's own
    change. Cost per interval: the shared probe forward (capturing each active block's input)
    plus one forward of the probe through each active block's previous copy; memory: one copy
    of each active block's weights (released as blocks freeze).

    Args:
        probe: model inputs of the probe batch (or a :class:`ProbeForward` shared with the
            other probe signals).
        lookahead: measure only the lowest ``lookahead`` active blocks (freezing takes a
            prefix, so a decision can only reach those); ``None`` (default): every active block,
            as a recording run wants.
    """

    name = "block_drift"

    def __init__(self, probe: Union[Mapping[str, Tensor], ProbeForward], lookahead: Optional[int] = None) -> None:
        super().__init__()
        if lookahead is not None and (int(lookahead) != lookahead or lookahead < 1):
            raise ValueError(f"BlockDrift: lookahead must be an integer >= 1 or None, got {lookahead!r}")
        self.lookahead = lookahead
        self.forward = as_forward(probe)
        self._then: Dict[int, nn.Module] = {}
        self._ctl = None

    def bind(self, controller) -> None:
        self._ctl = controller

    @torch.no_grad()
    def interval_end(self, active: Sequence[int]) -> List[Optional[float]]:
        ctl = self._ctl
        out: List[Optional[float]] = [None] * ctl.num_blocks
        active = sorted(active)[:self.lookahead] if self.lookahead else list(active)
        outs, _ = self.forward.run(ctl, active, inputs=True)
        for b in active:
            then = self._then.get(b)
            if then is not None and b in outs and b in self.forward.inputs:
                args, kwargs = self.forward.inputs[b]
                out[b] = 1.0 - linear_cka(outs[b], self.forward.tokens(then(*args, **kwargs)))
            self._keep(b)
        return out

    def _keep(self, b: int) -> None:
        blk = self._ctl.layout.blocks[b]
        if b in self._then:
            self._then[b].load_state_dict(blk.state_dict())
        else:
            self._then[b] = copy.deepcopy(blk).eval().requires_grad_(False)

    def release(self, block: int) -> None:
        self._then.pop(block, None)

    def state_dict(self) -> dict:
        return {"then": {b: m.state_dict() for b, m in self._then.items()}}

    def load_state_dict(self, state: dict) -> None:
        for b, sd in state.get("then", {}).items():
            self._keep(int(b))
            self._then[int(b)].load_state_dict(sd)
