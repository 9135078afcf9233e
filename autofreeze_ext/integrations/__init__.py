"""Framework integrations, imported on use:

* :class:`AutoFreezeCallback` (:mod:`.hf_callback`, ``pip install ".[hf]"``): freezing in any
  Hugging Face ``Trainer``;
* :class:`AutoFreezeTrainer` (:mod:`.hf_trainer`): freezing and the activation cache, also
  under ``torchrun`` (:mod:`.hf_ddp`);
* :class:`AutoFreezeLightning` (:mod:`.lightning`, ``pip install ".[lightning]"``): freezing in
  a Lightning ``Trainer``, checkpoints, DDP, and the cache through ``cached_forward``.
"""
from __future__ import annotations

_LAZY = {"AutoFreezeCallback": "hf_callback", "AutoFreezeTrainer": "hf_trainer", "AutoFreezeLightning": "lightning"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
