"""Task data: reading files (TSV, CSV, JSON Lines, Parquet) or datasets, columns, labels,
tokenisation and metrics."""
from .columns import DEFAULT_LABEL_COLUMNS, DEFAULT_TEXT_COLUMNS, Columns
from .encode import encode
from .errors import DataError
from .labels import LabelSpace
from .metrics import METRICS, check_metric, compute, default_metric
from .read import FORMATS, detect_format, read_table
from .task import Task, load_task, task_from_records

__all__ = ["Columns", "DEFAULT_LABEL_COLUMNS", "DEFAULT_TEXT_COLUMNS", "DataError", "FORMATS", "LabelSpace",
           "METRICS", "Task", "check_metric", "compute", "default_metric", "detect_format", "encode", "load_task",
           "read_table", "task_from_records"]
