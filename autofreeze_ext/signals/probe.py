"""The probe batch's forward pass, shared by the probe signals (one per interval end)."""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor


class ProbeForward:
    """Runs the model once per interval end on a fixed probe batch of training samples: no
    gradients, eval mode (no dropout, no random numbers drawn, so training is unchanged).
    Collects the outputs of the requested blocks (padding tokens dropped) and, when the probe
    has ``labels``, the model's loss. :class:`ProbeDrift` and :class:`ProbeLoss` built on the
    same object share that one forward pass."""

    def __init__(self, probe: Mapping[str, Tensor]) -> None:
        if not probe:
            raise ValueError("the probe signals need a probe batch: a dict of model inputs")
        self.probe = dict(probe)
        self._key: Optional[int] = None
        self._outs: Dict[int, Tensor] = {}
        self._loss: Optional[float] = None
        #: block -> (args, kwargs) it was called with in the last forward (when inputs were asked for)
        self.inputs: Dict[int, tuple] = {}

    def run(self, ctl, blocks: Sequence[int], inputs: bool = False) -> Tuple[Dict[int, Tensor], Optional[float]]:
        """``(block -> [tokens, hidden] output, loss or None)`` at the controller's current step;
        with ``inputs`` also each block's call arguments (in :attr:`inputs`)."""
        if (self._key == ctl.global_step and set(blocks) <= set(self._outs)
                and (not inputs or set(blocks) <= set(self.inputs))):
            return self._outs, self._loss
        self._outs, self._loss = self._forward(ctl, blocks, inputs)
        self._key = ctl.global_step
        return self._outs, self._loss

    def tokens(self, h: Tensor) -> Tensor:
        """A block output as ``[tokens, hidden]`` with padding tokens dropped."""
        h = h[0] if isinstance(h, (tuple, list)) else h
        h = h.reshape(-1, h.shape[-1]) if h.dim() > 2 else h
        mask = self.probe.get("attention_mask")
        keep = mask.reshape(-1).bool().to(h.device) if mask is not None else None
        return (h[keep] if keep is not None and h.shape[0] == keep.shape[0] else h).float().cpu()

    @torch.no_grad()
    def _forward(self, ctl, blocks: Sequence[int], want_inputs: bool = False
                 ) -> Tuple[Dict[int, Tensor], Optional[float]]:
        model = ctl.model
        dev = next(model.parameters()).device
        inputs = {k: v.to(dev) for k, v in self.probe.items()}
        outs: Dict[int, Tensor] = {}

        def hook_for(b):
            def hook(module, args, output):
                outs[b] = self.tokens(output)
            return hook

        handles = [ctl.layout.blocks[b].register_forward_hook(hook_for(b)) for b in blocks]
        self.inputs = {}
        if want_inputs:
            def keep_input(b):
                def pre(module, args, kwargs):
                    self.inputs[b] = (args, kwargs)
                return pre
            handles += [ctl.layout.blocks[b].register_forward_pre_hook(keep_input(b), with_kwargs=True)
                        for b in blocks]
        was_training = model.training
        model.eval()
        try:
            out = model(**inputs)
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        loss = None
        if "labels" in inputs:
            loss = out.loss if hasattr(out, "loss") else out[0]
            loss = float(loss)
        return outs, loss


def as_forward(probe: Union[Mapping[str, Tensor], ProbeForward]) -> ProbeForward:
    """``probe`` itself if it is a :class:`ProbeForward`, else a new one over that batch."""
    return probe if isinstance(probe, ProbeForward) else ProbeForward(probe)
