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


def test_the_controller_and_the_loop_read_a_policy_only_through_its_declared_contract():
    """What a policy offers is declared on FreezePolicy; freezing/ and training/ never probe a
    policy with getattr (a misspelt attribute would silently fall back to a default)."""
    import pathlib
    import re

    root = pathlib.Path(autofreeze_ext.__file__).parent
    probing = re.compile(r"getattr\(\s*(self\.)?(policy|ctl\.policy|controller\.policy)\b")
    found = [f"{p.relative_to(root)}:{i}" for folder in ("freezing", "training") for p in (root / folder).rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if probing.search(line)]
    assert found == []
