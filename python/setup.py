"""Builds the eplb wheel: the extensions eplb._core (placement, no gRPC) and eplb._client (the
planner's RPC client) through the project's CMake (the repository root is this directory's
parent), the shared libraries they link (eplb/_libs), the pure-Python package, and the start-up
hook eplb_engines.pth at the top of the wheel (installed into site-packages, where the
interpreter runs it).

Environment: EPLB_CMAKE_BUILD_DIR reuses a CMake build directory (default: one under setuptools'
build_temp); EPLB_CMAKE_ARGS adds CMake arguments; EPLB_BUILD_JOBS sets the build's parallelism.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent


class CMakeBuild(build_ext):
    staged = None  # the CMake install tree, once built (both extensions come from one build)

    def build_extension(self, ext):
        stage = self.staged or self.build_and_stage()
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        module = ext.name.rpartition(".")[2]
        built = next((stage / "eplb").glob(f"{module}*.so"))
        shutil.copyfile(built, target)
        # The shared libraries, each under the name the loader asks for (symbolic links are
        # resolved: a wheel cannot hold them).
        libs = target.parent / "_libs"
        libs.mkdir(exist_ok=True)
        installed = sorted((stage / "eplb" / "_libs").iterdir())
        linked = {path.resolve() for path in installed if path.is_symlink()}
        for path in installed:
            if path.is_symlink() or path.resolve() not in linked:
                shutil.copyfile(path.resolve(), libs / path.name)

    def build_and_stage(self):
        if not (SOURCE / "core" / "CMakeLists.txt").is_file():
            sys.exit(f"eplb: {SOURCE} is not an eplb checkout; build the package from one")
        build_dir = Path(os.environ.get("EPLB_CMAKE_BUILD_DIR") or Path(self.build_temp) / "cmake")
        stage = build_dir / "stage"
        configure = [
            "cmake", "-S", str(SOURCE), "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release", "-DEPLB_PYTHON=ON", "-DEPLB_BUILD_SERVICE=ON",
            "-DEPLB_WITH_CUDA=OFF", "-DEPLB_BUILD_TESTS=OFF", "-DEPLB_BUILD_BENCH=OFF",
            f"-DPython_EXECUTABLE={sys.executable}",
        ]
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        try:
            import pybind11

            configure.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass  # Debian's pybind11-dev: found by CMake's own search
        configure += shlex.split(os.environ.get("EPLB_CMAKE_ARGS", ""))
        jobs = os.environ.get("EPLB_BUILD_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "eplb_python_core",
                        "eplb_python_client", "-j", jobs], check=True)
        shutil.rmtree(stage, ignore_errors=True)
        subprocess.run(["cmake", "--install", str(build_dir), "--component", "python",
                        "--prefix", str(stage)], check=True)
        shutil.rmtree(Path(self.get_ext_fullpath("eplb._core")).parent / "_libs",
                      ignore_errors=True)
        CMakeBuild.staged = stage
        return stage


class BuildPy(build_py):
    def run(self):
        super().run()
        # At the top of the wheel, so that it lands in site-packages itself.
        self.copy_file(str(HERE / "eplb_engines.pth"),
                       os.path.join(self.build_lib, "eplb_engines.pth"), preserve_mode=False)


setup(
    ext_modules=[Extension("eplb._core", sources=[]), Extension("eplb._client", sources=[])],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
)
