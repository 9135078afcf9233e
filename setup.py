"""Build script: setuptools drives CMake, which builds the torch-free core ``autofreeze_ext._C``.

Environment variables:
  AUTOFREEZE_CUDA_ARCHS   CUDA architectures, CMake syntax (default "80-real;90-real;90-virtual")
  AUTOFREEZE_NO_CUDA=1    skip the CUDA kernels even when nvcc is found
  AUTOFREEZE_NO_URING=1   skip liburing even when it is found
  AUTOFREEZE_BUILD_JOBS   parallel build jobs (default: CPU count)
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


def _tools() -> dict:
    """Absolute paths of the tools this build runs. pip's isolated builds put cmake and ninja in
    a temporary environment that is deleted afterwards, so a CMake build folder configured by
    one build names programs that no longer exist in the next."""
    tools = {"python": os.path.realpath(sys.executable), "cmake": shutil.which("cmake") or "cmake"}
    try:
        import ninja

        tools["ninja"] = os.path.join(ninja.BIN_DIR, "ninja")
    except (ImportError, AttributeError):
        ninja_exe = shutil.which("ninja")
        if ninja_exe:
            tools["ninja"] = ninja_exe
    return tools


def _build_dir(base: Path, name: str, tools: dict) -> Path:
    """A CMake build folder keyed to the tools that configure it (a stale one is never reused
    by another environment); folders of earlier environments are removed."""
    key = hashlib.sha1(repr(sorted(tools.items())).encode()).hexdigest()[:10]
    for old in base.glob(f"{name}-*"):
        if old.name != f"{name}-{key}" and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    legacy = base / name  # unkeyed folder of earlier versions of this script
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)
    path = base / f"{name}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        tools = _tools()
        build_dir = _build_dir(Path(self.build_temp).resolve(), ext.name, tools)
        cfg = "Debug" if self.debug else "Release"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        ]
        if os.environ.get("AUTOFREEZE_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['AUTOFREEZE_CUDA_ARCHS']}")
        if os.environ.get("AUTOFREEZE_NO_CUDA") == "1":
            args.append("-DAUTOFREEZE_WITH_CUDA=OFF")
        if os.environ.get("AUTOFREEZE_NO_URING") == "1":
            args.append("-DAUTOFREEZE_WITH_URING=OFF")
        if "ninja" in tools:
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}"]
        jobs = os.environ.get("AUTOFREEZE_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run([tools["cmake"], str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run([tools["cmake"], "--build", ".", "--config", cfg, "-j", jobs], cwd=build_dir, check=True)
        _report_backends(build_dir)


def _report_backends(build_dir: Path) -> None:
    """One line per backend left out, and how to get it (CMake writes what it found)."""
    found = {}
    summary = build_dir / "autofreeze_backends.txt"
    if summary.exists():
        for line in summary.read_text().splitlines():
            k, _, v = line.partition("=")
            found[k.strip()] = v.strip()
    if found.get("io_uring") != "ON":
        print("autofreeze_ext: io_uring left out (liburing not found): the cache's disk tier reads with a pread "
              "thread pool; to get io_uring: apt-get install liburing-dev, then reinstall", file=sys.stderr)
    if found.get("cuda") != "ON":
        print("autofreeze_ext: CUDA kernels left out (no nvcc found, or AUTOFREEZE_NO_CUDA=1): GPU runs use the "
              "PyTorch reference ops; to get them: install the CUDA toolkit (nvcc on PATH), then reinstall",
              file=sys.stderr)


setup(ext_modules=[CMakeExtension("autofreeze_ext._C")], cmdclass={"build_ext": CMakeBuild})
