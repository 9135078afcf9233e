"""Save the fine-tuned model and tokenizer when training finishes (``--save-model DIR``)."""
from __future__ import annotations

import logging
import os

from .base import Part

log = logging.getLogger("autofreeze_ext")


class ModelSaver(Part):
    """Writes ``save_pretrained`` of the model (every block, frozen ones included) and of the
    tokenizer into ``folder`` once training has run to its end (not when a run stops to be
    relaunched). Only the main rank writes; the folder then loads with
    ``AutoModelForSequenceClassification.from_pretrained(folder)``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def end(self, run) -> None:
        finished = run.prog["epoch"] >= run.cfg.optim.epochs or run.stop == "stop_after_steps"
        if not finished or not run.ctx.is_main:
            return
        os.makedirs(self.folder, exist_ok=True)
        run.model.save_pretrained(self.folder)
        if run.tokenizer is not None:
            run.tokenizer.save_pretrained(self.folder)
        run.saved_model = os.path.abspath(self.folder)
        log.info("model and tokenizer saved to %s", run.saved_model)
