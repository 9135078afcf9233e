"""The framework an integration builds on, imported when installed: its base class, or ``object``
and the message that says how to install it (raised when the integration is used)."""
from __future__ import annotations

import importlib
from typing import Optional, Tuple


def optional_base(module: str, name: str, extra: str) -> Tuple[type, Optional[str]]:
    """``(module.name, None)``, or ``(object, "... is not installed: pip install ...")``."""
    try:
        return getattr(importlib.import_module(module), name), None
    except ImportError:
        return object, f"{module.split('.')[0]} is not installed: pip install \".[{extra}]\""
