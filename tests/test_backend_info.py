"""backend_info() and `autofreeze info` say what is missing and how to get it."""
import types

from autofreeze_ext import _backend, cli


def test_missing_liburing_and_cuda_kernels_are_named_with_the_fix(monkeypatch):
    fake = types.SimpleNamespace(with_uring=False, with_cuda=False)
    monkeypatch.setattr(_backend, "_C", fake)
    lines = _backend.missing_backends(cuda_ok=True)
    assert len(lines) == 2
    assert lines[0].startswith("io_uring:") and "apt-get install liburing-dev" in lines[0]
    assert "pread thread pool" in lines[0]
    assert lines[1].startswith("CUDA kernels:") and "nvcc" in lines[1]
    assert _backend.missing_backends(cuda_ok=False) == lines[:1]  # no GPU here: CUDA kernels are not missing
    fake.with_uring = True
    assert _backend.missing_backends(cuda_ok=False) == []


def test_missing_compiled_core_says_how_to_build_it(monkeypatch):
    monkeypatch.delenv("AUTOFREEZE_FORCE_REFERENCE", raising=False)
    monkeypatch.setattr(_backend, "_C", None)
    monkeypatch.setattr(_backend, "_C_ERROR", "ImportError: no module named _C")
    (line,) = _backend.missing_backends(cuda_ok=False)
    assert "no module named _C" in line and "g++" in line and "pip install" in line
    monkeypatch.setenv("AUTOFREEZE_FORCE_REFERENCE", "1")
    (line,) = _backend.missing_backends(cuda_ok=False)
    assert "AUTOFREEZE_FORCE_REFERENCE" in line


def test_info_command_prints_the_missing_lines(monkeypatch, capsys):
    monkeypatch.setattr(_backend, "_C", types.SimpleNamespace(with_uring=False, with_cuda=False,
                                                               thread_backend=lambda: "t", crc32c_hardware=lambda: 1))
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "missing: io_uring" in out and "liburing-dev" in out
    assert _backend.backend_info()["missing"][0].startswith("io_uring")
