"""The run's record, typed: what the loop's parts count and the report and checkpoint keep."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from .config import PHASES


@dataclass
class Record:
    """Counters, times and traces of one run (``run.prog``). The :class:`~autofreeze_ext.
    training.parts.Progress` part updates it after each step and checkpoints it (its fields
    as a dict); the report reads it at the end."""

    step: int = 0  #: optimizer steps done
    epoch: int = 0  #: epochs done
    samples: int = 0  #: training rows seen (all ranks)
    train_time: float = 0.0  #: seconds of training (evaluation excluded)
    epoch_time: float = 0.0  #: seconds of training in the running epoch
    worker_seconds: float = 0.0  #: training seconds times the workers that spent them
    micro_batches: int = 0
    evals: List[dict] = field(default_factory=list)  #: one entry per dev evaluation (Evaluator)
    depth_trace: List[dict] = field(default_factory=list)  #: ``{"step", "depth"}`` at each change
    epoch_times: List[float] = field(default_factory=list)
    phases: Dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in PHASES})  #: seconds per phase
    resumed_at: List[int] = field(default_factory=list)  #: the step of each resume
    losses: List[float] = field(default_factory=list)  #: the training loss of each step
    world_sizes: List[dict] = field(default_factory=list)  #: ``{"step", "world_size"}`` per (re)start
    startups: List[dict] = field(default_factory=list)  #: start-up seconds per (re)start
    depth_seconds: Dict[str, list] = field(default_factory=dict)  #: frozen depth -> [seconds, steps]
    batch_trace: List[dict] = field(default_factory=list)  #: ``{"step", "epoch", "global_batch"}`` at each change

    @classmethod
    def new(cls, depth: int, batch_size: int) -> "Record":
        """A fresh record of a run that starts at frozen ``depth`` with global batch ``batch_size``."""
        return cls(depth_trace=[{"step": 0, "depth": depth}],
                   batch_trace=[{"step": 0, "epoch": 0, "global_batch": batch_size}])
