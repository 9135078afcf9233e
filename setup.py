"""Build script: setuptools drives CMake, which builds the torch-free core ``autofreeze_ext._C``.

Environment variables:
  AUTOFREEZE_CUDA_ARCHS   CUDA architectures, CMake syntax (default "80-real;90-real;90-virtual")
  AUTOFREEZE_NO_CUDA=1    skip the CUDA kernels even when nvcc is found
  AUTOFREEZE_NO_URING=1   skip liburing even when it is found
  AUTOFREEZE_BUILD_JOBS   parallel build jobs (default: CPU count)
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
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
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        jobs = os.environ.get("AUTOFREEZE_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", cfg, "-j", jobs], cwd=build_dir, check=True)


setup(ext_modules=[CMakeExtension("autofreeze_ext._C")], cmdclass={"build_ext": CMakeBuild})
