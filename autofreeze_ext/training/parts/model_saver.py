"""Save the fine-tuned model and tokenizer when training finishes (``--save-model DIR``)."""
from __future__ import annotations

import logging
import os

from .base import Part
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

    def end(self, run) -> None:
        finished = run.prog["epoch"] >= run.cfg.optim.epochs or run.stop in ("stop_after_steps", CONVERGED)
        if not finished or not run.ctx.is_main:
            return
        try:
            os.makedirs(self.folder, exist_ok=True)
            run.model.save_pretrained(self.folder)
            if run.tokenizer is not None:
                run.tokenizer.save_pretrained(self.folder)
        except OSError as exc:  # the report is still written; it says where saving failed
            run.save_error = f"could not save the model to {self.folder}: {exc.strerror or exc}"
            log.error("%s", run.save_error)
            return
        run.saved_model = os.path.abspath(self.folder)
        log.info("model and tokenizer saved to %s", run.saved_model)
