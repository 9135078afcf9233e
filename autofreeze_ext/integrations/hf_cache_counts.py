"""The activation cache's counts across a resumed ``Trainer`` run: each checkpoint keeps the
counts so far (one file per process), a run resumed from it adds its own to them."""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

from .._io import atomic_json
from .hf_callback import saved_folder

try:
    from transformers import TrainerCallback
except ImportError:  # transformers is optional
    TrainerCallback = object  # type: ignore[misc,assignment]


def counts_file(folder: str, rank: int) -> str:
    """Where a ``checkpoint-N`` folder keeps process ``rank``'s cache counts."""
    return os.path.join(folder, f"autofreeze_cache_counts_rank{rank}.json")


class CacheCounts(TrainerCallback):  # type: ignore[misc,valid-type]
    """Writes ``totals()`` (the counts so far, the earlier processes' included) into every
    checkpoint the Trainer saves; :meth:`resume_from` reads them back as :attr:`before`."""

    def __init__(self, totals: Callable[[], dict]) -> None:
        self.totals = totals
        self.before: Optional[dict] = None  #: what the checkpoint resumed from counted (None: a fresh run)

    def resume_from(self, folder: Optional[str], rank: int) -> None:
        """Count on from the checkpoint in ``folder`` (None: from zero)."""
        path = counts_file(folder, rank) if folder else None
        self.before = None
        if path and os.path.exists(path):
            with open(path) as f:
                self.before = json.load(f)

    def on_save(self, args, state, control, **kw):
        folder = saved_folder(args, state)
        counts = self.totals()
        if counts and os.path.isdir(folder):
            atomic_json(counts_file(folder, args.process_index), counts)
