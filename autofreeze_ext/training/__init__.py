"""The fine-tuning driver behind ``autofreeze finetune``: a small loop core with pluggable parts.

* ``config``: :class:`FinetuneConfig` and its checks; ``modes``: mode strings and their policy.
* ``build``: from a configuration to a :class:`~autofreeze_ext.training.build.Run` (data,
  model, optimizer, controller, cache, runner, DDP); ``checkpoint``: the versioned file.
* ``step``: one optimizer step; ``loop``: epochs of steps and the parts around them.
* ``parts``: the run record, progress bar, evaluator, epoch ends, batch packer, cost goal,
  checkpointer, fault injection; ``report``: the JSON report and the compare table.
"""
from __future__ import annotations

import time
from typing import Iterable, List, Optional

from .build import Run, build_run
from .checkpoint import restore_parts
from .checks import validate
from .config import PHASES, FinetuneConfig
from .evaluate import evaluate
from .loop import run_loop
from .model import ModelError, default_model_path, load_model_and_tokenizer, probe_batch
from .modes import MODES_HELP, make_mode_policy, split_mode
from .parts import (Checkpointer, ConvergedStop, CostGoal, EpochEnd, Evaluator, LossGuard, ModelSaver, Packer, Part,
                    Progress, ProgressBar, StepTimer)
from .report import COMPARE_HEADERS, best_score, compare_headers, compare_table, final_score, make_report, score


def finetune(cfg: FinetuneConfig, parts: Optional[Iterable[Part]] = None) -> dict:
    """Train with ``cfg.freeze.mode`` and return the report (times exclude evaluation).

    With ``cfg.run.checkpoint_dir`` a checkpoint (model, optimizer, scheduler, controller, sampler
    position, RNG, every part's state and the cache's identity) is written atomically every
    ``cfg.run.checkpoint_every`` steps and at each epoch end; ``cfg.run.resume`` continues from it.
    ``parts``: extra :class:`~autofreeze_ext.training.parts.Part` objects, called after the
    built-in ones (e.g. :class:`~autofreeze_ext.training.parts.KillAt` in the resume tests).
    """
    run = build_run(cfg, time.perf_counter())
    progress, timer = Progress(), StepTimer()
    packer, cost_goal = Packer(timer), CostGoal(timer)
    # Progress first: it counts the step every other part reads. The timer's readings go to
    # whoever asks (packer, cost goal); a checkpoint is written after all parts have answered.
    core: List[Part] = [progress, LossGuard(), *([ProgressBar()] if cfg.run.progress and run.ctx.is_main else []),
                        Evaluator(), EpochEnd(progress), timer, packer, cost_goal, ConvergedStop()]
    if run.state is not None:
        restore_parts(run.state, core)
    saver = ModelSaver(cfg.run.save_model) if cfg.run.save_model else None
    try:
        run_loop(run, [*core, *([saver] if saver else []), *(parts or ())], Checkpointer(core))
        return make_report(run, packer, cost_goal, saver)
    finally:
        run.clock.remove()
        if run.cache is not None:
            run.cache.close()
        if run.runner is not None:
            run.runner.close()


__all__ = ["COMPARE_HEADERS", "FinetuneConfig", "MODES_HELP", "ModelError", "PHASES", "Run", "best_score",
           "compare_headers", "compare_table", "default_model_path", "evaluate", "final_score", "finetune",
           "load_model_and_tokenizer", "make_mode_policy", "make_report", "probe_batch", "score", "split_mode",
           "validate"]
