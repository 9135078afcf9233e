"""The package is grouped by concern, with no compatibility layer for old import paths (the
project has had no release to stay compatible with)."""
import importlib
import sys

import pytest

import autofreeze_ext

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("old", ["controller", "prefix", "distributed", "planner", "finetune", "hf", "_pystore"])
def test_old_module_paths_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"autofreeze_ext.{old}")


def test_no_import_hook_of_ours():
    assert not [f for f in sys.meta_path if type(f).__module__.startswith(autofreeze_ext.__name__)]
