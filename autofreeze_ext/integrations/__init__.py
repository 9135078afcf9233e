"""Hugging Face ``transformers`` integrations (need ``pip install ".[hf]"``, imported on use):

* :class:`AutoFreezeCallback` (:mod:`.hf_callback`): freezing in any ``Trainer``;
* :class:`AutoFreezeTrainer` (:mod:`.hf_trainer`): freezing and the activation cache, also
  under ``torchrun`` (:mod:`.hf_ddp`).
"""
from __future__ import annotations

_LAZY = {"AutoFreezeCallback": "hf_callback", "AutoFreezeTrainer": "hf_trainer"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
