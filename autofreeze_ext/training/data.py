"""The run's training and dev tasks, read as the configuration says."""
from __future__ import annotations

from typing import Tuple

from ..tasks import Columns, Task, check_metric, load_task
from .config import FinetuneConfig


def load_tasks(cfg: FinetuneConfig) -> Tuple[Task, Task, str]:
    """Training task (its labels define the label space), dev task (labels must fit it) and the
    metric that drives the comparison (checked against the task's kind)."""
    cols = Columns(cfg.data.text_column, cfg.data.text_pair_column, cfg.data.label_column)
    train = load_task(cfg.data.train, columns=cols, fmt=cfg.data.data_format, limit=cfg.data.train_samples,
                      label_kind=cfg.data.label_kind)
    dev = load_task(cfg.data.dev, columns=cols, fmt=cfg.data.data_format, label_space=train.label_space,
                    train_path=cfg.data.train)
    if (train.text_pairs is None) != (dev.text_pairs is None):
        raise ValueError(f"{cfg.data.train} has {'pairs' if train.text_pairs else 'single texts'} "
                         f"({train.columns.text}/{train.columns.text_pair}) but {cfg.data.dev} has "
                         f"{'pairs' if dev.text_pairs else 'single texts'} "
                         f"({dev.columns.text}/{dev.columns.text_pair})")
    return train, dev, check_metric(cfg.data.metric, train.label_space.regression)
