"""The run's training, dev and validation tasks, read as the configuration says."""
from __future__ import annotations

import logging
import os
from typing import NamedTuple, Optional, Tuple

from ..tasks import Columns, DataError, Task, check_metric, load_task
from ..tasks.split import DEFAULT_FRACTION, FEW_ROWS, hold_out
from .config import FinetuneConfig
from .modes import slice_is_read, wants_val_slice

log = logging.getLogger("autofreeze_ext")


class Tasks(NamedTuple):
    train: Task  #: the rows trained on (its labels define the label space)
    dev: Task  #: the rows the report scores
    val: Optional[Task]  #: the validation slice (None: the run has none)
    metric: str  #: the dev metric that drives the comparison


def load_tasks(cfg: FinetuneConfig) -> Tasks:
    """Training task, dev task (labels must fit the training label space), the validation slice
    (``--val FILE``, or held out of the training rows when the policy reads one) and the metric
    (checked against the task's kind)."""
    cols = Columns(cfg.data.text_column, cfg.data.text_pair_column, cfg.data.label_column)
    train = load_task(cfg.data.train, columns=cols, fmt=cfg.data.data_format, limit=cfg.data.train_samples,
                      label_kind=cfg.data.label_kind)
    dev = load_task(cfg.data.dev, columns=cols, fmt=cfg.data.data_format, label_space=train.label_space,
                    train_path=cfg.data.train)
    _same_shape(cfg.data.train, train, cfg.data.dev, dev)
    val = None
    if cfg.data.val is not None:
        _not_the_same(cfg)
        val = load_task(cfg.data.val, columns=cols, fmt=cfg.data.data_format, label_space=train.label_space,
                        train_path=cfg.data.train)
        _same_shape(cfg.data.train, train, cfg.data.val, val)
        _warn_shared_rows(cfg, val, (("--dev", dev), ("--train", train)))
    elif wants_val_slice(cfg):
        val = _held_out(cfg, train)
        if val is not None:
            train, val = val
            log.info("validation slice: %d of the training rows held out (never trained on); %d train", len(val),
                     len(train))
            if len(train) < len(val):
                log.warning("--val-fraction %g holds out more rows (%d) than are left to train on (%d)",
                            cfg.data.val_fraction or DEFAULT_FRACTION, len(val), len(train))
    if val is not None and not slice_is_read(cfg):
        if cfg.data.val is not None:
            log.warning("mode %s does not read the validation file (%d rows): only the plateau policies and "
                        "--record-signals do", cfg.freeze.mode, len(val))
        else:
            log.warning("a validation slice of %d rows is held out, but mode %s does not read it (only the plateau "
                        "policies and --record-signals do): those rows are not trained on", len(val), cfg.freeze.mode)
    if dev.label_space.regression and len(set(dev.labels)) < 2:
        log.warning("every label in %s is %s: Pearson and Spearman are undefined on it (reported as 0); use dev "
                    "rows whose targets vary", cfg.data.dev, dev.labels[0] if dev.labels else "missing")
    if val is not None and len(val) < FEW_ROWS and slice_is_read(cfg):
        more = "a --val FILE with more rows" if cfg.data.val is not None else "--val FILE or a larger --val-fraction"
        log.warning("the validation slice has only %d row%s: its score moves in coarse steps; pass %s", len(val),
                    "" if len(val) == 1 else "s", more)
    return Tasks(train, dev, val, check_metric(cfg.data.metric, train.label_space.regression))


def _held_out(cfg: FinetuneConfig, train: Task) -> Optional[Tuple[Task, Task]]:
    """``(training rows, validation slice)``; None where too few rows allow a slice and only the
    default policy asked for one (it then falls back to a policy that needs none)."""
    try:
        return hold_out(train, cfg.data.val_fraction or DEFAULT_FRACTION, seed=cfg.optim.seed)
    except DataError:
        if cfg.freeze.policy is not None or cfg.data.val_fraction is not None:
            raise
        log.warning("%d training rows: too few to hold out the default policy's validation slice", len(train.labels))
        return None


def _not_the_same(cfg: FinetuneConfig) -> None:
    """The validation file is neither the dev set the run reports nor the training file."""
    val = os.path.realpath(cfg.data.val)
    for option, path in (("--dev", cfg.data.dev), ("--train", cfg.data.train)):
        if val == os.path.realpath(path):
            raise ValueError(f"--val {cfg.data.val} is the {option} file: the validation slice must be rows the run "
                             "neither reports on nor trains on (or leave --val out: 5% of the training rows are "
                             "held out)")


def _warn_shared_rows(cfg: FinetuneConfig, val: Task, others) -> None:
    """A validation file that is mostly rows of the dev or training file (a copy under another
    name, which the path check cannot see): say so, with the count."""
    rows = lambda t: set(zip(t.texts, t.text_pairs or [None] * len(t.texts)))  # noqa: E731
    mine = rows(val)
    for option, task in others:
        shared = len(mine & rows(task))
        if shared and shared * 2 >= len(mine):
            log.warning("--val %s: %d of its %d distinct rows are also in the %s file: the validation slice should be "
                        "rows the run neither reports on nor trains on", cfg.data.val, shared, len(mine), option)


def _same_shape(train_path: str, train: Task, path: str, other: Task) -> None:
    if (train.text_pairs is None) != (other.text_pairs is None):
        raise ValueError(f"{train_path} has {'pairs' if train.text_pairs else 'single texts'} "
                         f"({train.columns.text}/{train.columns.text_pair}) but {path} has "
                         f"{'pairs' if other.text_pairs else 'single texts'} "
                         f"({other.columns.text}/{other.columns.text_pair})")
