"""The command line is made from the configuration's fields: one declaration per option."""
import dataclasses
import typing

import pytest

from autofreeze_ext import cli
from autofreeze_ext.training.checks import validate
from autofreeze_ext.training.config import FinetuneConfig, choices_of, option_flag, sections

pytestmark = pytest.mark.reference


def _parser():
    import argparse

    p = argparse.ArgumentParser()
    cli._common(p)
    return p


def _fields():
    for sec, cls in sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli") is not False:
                yield sec, f, hints[f.name]


def test_no_arguments_give_the_configurations_defaults():
    args = _parser().parse_args([])
    assert cli._config(args, "autofreeze").options() == FinetuneConfig().options()


def _other_value(f, hint):
    """A value other than the default, and how to write it on the command line."""
    m = f.metadata
    if hint is bool:
        return (not f.default), []
    if "choices" in m:
        v = next(c for c in choices_of(f) if c != f.default)
        return v, [v]
    if "const" in m:
        return "other", ["other"]
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if base[0] is int:
        v = (f.default or 0) + 3
    elif base[0] is float:
        v = 0.375 if f.default != 0.375 else 0.25
    else:
        v = "some/value"
    return v, [str(v)]


@pytest.mark.parametrize("sec,f,hint", list(_fields()), ids=lambda x: getattr(x, "name", ""))
def test_each_option_reaches_its_field(sec, f, hint):
    value, words = _other_value(f, hint)
    args = _parser().parse_args([option_flag(f), *words])
    cfg = FinetuneConfig.from_options(**{k: getattr(args, k) for k in FinetuneConfig().options() if hasattr(args, k)})
    assert getattr(getattr(cfg, sec), f.name) == value


def test_every_option_is_in_help_once(capsys):
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    text = capsys.readouterr().out
    for _, f, _ in _fields():
        if not f.metadata.get("hidden"):
            assert text.count(option_flag(f) + " ") + text.count(option_flag(f) + "\n") >= 1, option_flag(f)
    assert "--stop-after-steps" not in text  # hidden
    flat = " ".join(text.split())
    for _, f, _ in _fields():  # every default worth saying is said (0 and 1 too, not only other numbers)
        m = f.metadata
        if not m.get("hidden") and not any(f.default is v for v in (None, True, False)) and "default" not in m["help"]:
            assert f"(default: {f.default})" in flat, option_flag(f)


def test_a_policy_registered_at_run_time_is_a_valid_choice(monkeypatch):
    from autofreeze_ext.policies import POLICIES

    monkeypatch.setitem(POLICIES, "mine", (lambda o: None, "test policy"))
    validate(FinetuneConfig.from_options(policy="mine"))
    args = _parser().parse_args(["--policy", "mine"])
    assert args.policy == "mine"


@pytest.mark.parametrize("sec,f,hint", [x for x in _fields() if "choices" in x[1].metadata],
                         ids=lambda x: getattr(x, "name", ""))
def test_a_value_outside_the_choices_is_refused_through_the_api_too(sec, f, hint):
    cfg = FinetuneConfig()
    setattr(getattr(cfg, sec), f.name, "nope")
    with pytest.raises(ValueError, match=f"{option_flag(f)}: unknown value 'nope'"):
        validate(cfg)
