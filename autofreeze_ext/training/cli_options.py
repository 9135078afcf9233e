"""The ``autofreeze finetune`` / ``compare`` command-line options, made from the configuration's
field metadata (:mod:`~autofreeze_ext.training.config`): an option is declared in one place,
its field, and appears here with its flag, help, default, choices and --help group."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from .config import choices_of, option_flag, sections


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One argument per configuration field (``dest`` its flat option name), in --help groups."""
    groups: dict = {"": parser}
    for _, cls in sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli") is False:
                continue
            title = f.metadata.get("group", cls.GROUP)
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            groups[title].add_argument(option_flag(f), **_arguments(f, hints[f.name]))


def _arguments(f: dataclasses.Field, hint) -> dict:
    m = f.metadata
    kw = {"dest": m.get("option", f.name), "default": f.default, "help": _help(f)}
    if hint is bool:
        if f.default and not m.get("negate"):
            raise TypeError(f"{f.name}: a switch on by default needs the flag that turns it off (negate=)")
        kw["action"] = "store_false" if f.default else "store_true"
        return kw
    kw["type"] = m.get("parse") or _value_type(hint)
    if "choices" in m:
        kw["choices"] = choices_of(f)
    if "metavar" in m:
        kw["metavar"] = m["metavar"]
    if "const" in m:
        kw["nargs"], kw["const"] = "?", m["const"]
    return kw


def _value_type(hint):
    """``int`` of ``Optional[int]``, and so on."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _help(f: dataclasses.Field) -> str:
    m = f.metadata
    if m.get("hidden"):
        return argparse.SUPPRESS
    text = m["help"]
    shown = not any(f.default is v for v in (None, False, True)) and "default" not in text
    return (text + (f" (default: {f.default})" if shown else "")).replace("%", "%%")
