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


MODES = ["full", "static:2", "static:half", "static:all", "static:1@3", "autofreeze", "static:2+cache",
         "static:half+cache", "static:1@3+cache", "autofreeze+cache"]


@pytest.mark.parametrize("mode", MODES)
def test_every_documented_mode_means_the_same_at_every_entry_point(mode, tiny_ckpt):
    """The mode grammar is parsed once (policies.modes): the CLI's configuration check, the run's
    policy, make_policy and the Trainer callback accept the same strings and build the same
    policy."""
    from autofreeze_ext.policies import MODES_HELP, make_policy
    from autofreeze_ext.training import FinetuneConfig, make_mode_policy, validate
    from autofreeze_ext.training.modes import policy_options

    for documented in ("static:half", "static:K@STEP", "autofreeze", "+cache"):
        assert documented in MODES_HELP
    cfg = FinetuneConfig.from_options(mode=mode)
    validate(cfg)
    run = make_mode_policy(mode, cfg, num_blocks=4, total_steps=100).describe()
    assert make_policy(mode, num_blocks=4, options=policy_options(cfg, 100)).describe() == run
    if not mode.endswith("+cache"):  # the callback runs the Trainer's whole forward: no cache suffix there
        pytest.importorskip("transformers")
        from autofreeze_ext.integrations import AutoFreezeCallback

        AutoFreezeCallback(mode)  # accepted (built at train begin from the same make_policy)
    pytest.importorskip("lightning")
    from autofreeze_ext.integrations.lightning import AutoFreezeLightning

    AutoFreezeLightning(mode)  # accepted (built at fit start from the same make_policy)


@pytest.mark.parametrize("bad", ["full+cache", "static:x", "static:2@", "static:-1", "sometimes"])
def test_a_bad_mode_is_refused_the_same_way_everywhere(bad):
    from autofreeze_ext.policies import make_policy
    from autofreeze_ext.training import FinetuneConfig, validate

    with pytest.raises(ValueError, match="mode"):
        validate(FinetuneConfig.from_options(mode=bad))
    with pytest.raises(ValueError, match="mode"):
        make_policy(bad)
    pytest.importorskip("transformers")
    from autofreeze_ext.integrations import AutoFreezeCallback

    with pytest.raises(ValueError, match="mode"):
        AutoFreezeCallback(bad)
    pytest.importorskip("lightning")
    from autofreeze_ext.integrations.lightning import AutoFreezeLightning

    with pytest.raises(ValueError, match="mode"):
        AutoFreezeLightning(bad)
