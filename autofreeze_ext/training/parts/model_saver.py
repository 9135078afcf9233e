"""Save the fine-tuned model and tokenizer when training finishes (``--save-model DIR``)."""
from __future__ import annotations

import logging
import os
from typing import Optional

from .base import STOP_AFTER_STEPS, Part
from .converged import CONVERGED

log = logging.getLogger("autofreeze_ext")


class ModelSaver(Part):
    """Writes ``save_pretrained`` of the model (every block, frozen ones included) and of the
    tokenizer into ``folder`` once training has run to its end (not when a run stops to be
    relaunched). Only the main rank writes; the folder then loads with
    ``AutoModelForSequenceClassification.from_pretrained(folder)``. A write that fails (the
    folder was checked before training, but a disk can fill) is logged and kept in the report's
    ``save_error``: the run's report is written all the same."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.saved: Optional[str] = None  #: where the model was written (the report's ``saved_model``)
        self.error: Optional[str] = None  #: why it could not be (the report's ``save_error``)

    def end(self, run) -> None:
        finished = run.prog.epoch >= run.cfg.optim.epochs or run.stopped in (STOP_AFTER_STEPS, CONVERGED)
        if not finished or not run.ctx.is_main:
            return
        try:
            os.makedirs(self.folder, exist_ok=True)
            run.model.save_pretrained(self.folder)
            if run.tokenizer is not None:
                run.tokenizer.save_pretrained(self.folder)
        except OSError as exc:  # the report is still written; it says where saving failed
            self.error = f"could not save the model to {self.folder}: {exc.strerror or exc}"
            log.error("%s", self.error)
            return
        self.saved = os.path.abspath(self.folder)
        log.info("model and tokenizer saved to %s", self.saved)
