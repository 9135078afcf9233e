"""The error every task-data problem raises."""


class DataError(ValueError):
    """The task file is missing or malformed; the message says where (file, line or row) and how."""
