"""The activation cache: what a frozen prefix computed for each sample, kept in RAM and on disk.

:mod:`.activation_cache` is the cache (tiers, fingerprints, the read-vs-recompute decision,
prefetch plans); it stores records through the C++ I/O engine (``csrc/io``) or, without the
compiled core, through :mod:`.py_store`, its pure-Python twin.
"""
from .activation_cache import ActivationCache, CacheError, fingerprint_of, parse_bytes
from .py_store import PyRecordStore

__all__ = ["ActivationCache", "CacheError", "PyRecordStore", "fingerprint_of", "parse_bytes"]
