"""The package is grouped by concern; the modules' old import paths still work, with a warning."""
import importlib
import warnings

import pytest

from autofreeze_ext._moved import MOVED

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_path_gives_the_moved_module_with_a_deprecation_warning(old):
    if old.startswith("hf"):
        pytest.importorskip("transformers")
    new = importlib.import_module(f"autofreeze_ext.{MOVED[old]}")
    import sys

    sys.modules.pop(f"autofreeze_ext.{old}", None)
    with pytest.warns(DeprecationWarning, match=MOVED[old].replace(".", r"\.")):
        mod = importlib.import_module(f"autofreeze_ext.{old}")
    assert mod is new


def test_from_imports_of_old_paths_keep_working():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from autofreeze_ext.distributed import FreezingDDP, init_from_env  # noqa: F401
        from autofreeze_ext.finetune import FinetuneConfig, finetune  # noqa: F401
        from autofreeze_ext.planner import choose_workers  # noqa: F401
    from autofreeze_ext.parallel import FreezingDDP as moved

    assert FreezingDDP is moved
