"""Old import paths of the modules that moved when the package was grouped by concern: importing
one still works and warns (``DeprecationWarning``) with the new path."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "adapters": "freezing.adapters", "controller": "freezing.controller", "prefix": "freezing.prefix",
    "soft_freeze": "freezing.soft_freeze", "stats": "freezing.stats", "_pystore": "cache.py_store",
    "distributed": "parallel", "packing": "planning.packing", "planner": "planning.planner",
    "estimate": "planning.estimate", "hf": "integrations.hf_callback", "hf_trainer": "integrations.hf_trainer",
    "hf_ddp": "integrations.hf_ddp", "finetune": "training",
}
_PREFIX = "autofreeze_ext."


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import autofreeze_ext.OLD`` with the module at its new path."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith(_PREFIX) and name[len(_PREFIX):] in MOVED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        new = _PREFIX + MOVED[spec.name[len(_PREFIX):]]
        warnings.warn(f"{spec.name} moved to {new}; the old path will be removed", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
