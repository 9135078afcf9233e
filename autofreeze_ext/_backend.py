"""Loads the compiled core if it is there and says which backends are in use.

Nothing here may fail at import: without ``autofreeze_ext._C`` (not built, wrong platform,
``AUTOFREEZE_FORCE_REFERENCE=1``) every op runs its pure-PyTorch reference implementation.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

_C: Any = None
_C_ERROR: Optional[str] = None

if os.environ.get("AUTOFREEZE_FORCE_REFERENCE") == "1":
    _C_ERROR = "disabled by AUTOFREEZE_FORCE_REFERENCE=1"
else:
    try:
        from . import _C  # type: ignore[attr-defined,no-redef]
    except ImportError as exc:  # not built, or built for another platform
        _C = None
        _C_ERROR = f"{type(exc).__name__}: {exc}"


def compiled() -> bool:
    """True when the compiled core is loaded."""
    return _C is not None


def compiled_with_cuda() -> bool:
    return _C is not None and bool(getattr(_C, "with_cuda", False))


def backend_info() -> Dict[str, Any]:
    """Which implementation each op uses on this machine, and why.

    Returns a dict with ``compiled`` (bool), ``compiled_error`` (why it is missing, or None),
    ``cuda_available`` (torch sees a GPU), ``grad_stats`` (``{"cpu": ..., "cuda": ...}``, each
    one of ``"cpp"``/``"cuda"``/``"reference"``/``"unavailable"``) and, once the I/O engine is
    loaded, the cache I/O engine (``cache_io``: liburing compiled in, CRC32C implementation),
    and ``missing``: one line per backend left out here, saying what runs instead and how to
    get it (empty when nothing is missing). ``autofreeze info`` prints the same.
    """
    import torch

    cuda_ok = torch.cuda.is_available()
    if compiled_with_cuda():
        cuda_kernel = "cuda" if cuda_ok else "unavailable (no CUDA device)"
    elif cuda_ok:
        cuda_kernel = "reference (compiled core built without CUDA)" if compiled() else "reference"
    else:
        cuda_kernel = "unavailable (no CUDA device)"
    return {
        "compiled": compiled(),
        "compiled_error": _C_ERROR,
        "compiled_with_cuda": compiled_with_cuda(),
        "cuda_available": cuda_ok,
        "torch": torch.__version__,
        "grad_stats": {"cpu": "cpp" if compiled() else "reference", "cuda": cuda_kernel},
        "cpu_threads": _C.thread_backend() if compiled() else "torch",
        "cache_io": {
            "engine": "c++" if compiled() else "python (pure-Python record store)",
            "uring_compiled": bool(getattr(_C, "with_uring", False)),
            "crc32c": (("sse4.2" if _C.crc32c_hardware() else "table") if compiled() else None),
            "note": "per-cache backend, O_DIRECT and pinning: ActivationCache.info()",
        },
        "missing": missing_backends(cuda_ok),
    }


REBUILD = "then reinstall (pip install . again; pip install -v . shows what the build found)"


def missing_backends(cuda_ok: bool) -> List[str]:
    """One line per backend left out: what runs instead and how to get it."""
    if not compiled() and os.environ.get("AUTOFREEZE_FORCE_REFERENCE") == "1":
        return ["compiled core: switched off by AUTOFREEZE_FORCE_REFERENCE=1; every op runs its PyTorch reference "
                "and the cache's disk tier the pure-Python record store; unset the variable to use it"]
    if not compiled():
        return [f"compiled core: not loaded ({_C_ERROR}); every op runs its PyTorch reference and the cache's disk "
                f"tier the pure-Python record store; to get it: a C++17 compiler and CMake (apt-get install g++ "
                f"cmake), {REBUILD}"]
    out = []
    if not getattr(_C, "with_uring", False):
        out.append("io_uring: liburing was not found at build time; the cache's disk tier reads with a pread thread "
                   f"pool; to get it: apt-get install liburing-dev (dnf install liburing-devel), {REBUILD}")
    if cuda_ok and not compiled_with_cuda():
        out.append("CUDA kernels: the core was built without nvcc (or with AUTOFREEZE_NO_CUDA=1); GPU runs use the "
                   f"PyTorch reference for grad_stats; to get them: put the CUDA toolkit's nvcc on PATH, {REBUILD}")
    return out

