"""Per-backend implementations of the ops in ``autofreeze_ext.ops``.

``default`` is the pure-PyTorch reference (the op's own body); ``cpu`` and ``cuda`` register
the compiled kernels when ``autofreeze_ext._C`` provides them.
"""
_registered = False


def register_all() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from .. import _backend

    if not _backend.compiled():
        return
    from . import cpu

    cpu.register()
    if _backend.compiled_with_cuda():
        from . import cuda

        cuda.register()
