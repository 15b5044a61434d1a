"""Hatch build hook: cythonize and compile bitnet_kernels._cpu (portable flags, OpenMP).

Portable means no -march flag: bk_simd.h gives each AVX2 / AVX-512 function its own target attribute and the
kernels pick one at run time, so a wheel built here runs on any x86-64 CPU. The extension is built in place
(src/bitnet_kernels/_cpu.*.so): an editable install finds it there, a wheel gets it through force_include.

Also runnable by hand to rebuild in place after editing the .pyx/.h: `python packages/bitnet-kernels/hatch_build.py`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # running by hand without hatchling
    BuildHookInterface = object

ROOT = Path(__file__).resolve().parent
PKG = ROOT / "src" / "bitnet_kernels"

COMPILE_ARGS = [
    "-O3",
    "-pthread",
    "-fopenmp",
    # float results must not depend on whether the compiler fused a*b+c (the oracles use separate roundings)
    "-ffp-contract=off",
    "-fno-math-errno",
    "-Wno-unused-function",
    "-Wno-unreachable-code",
]
LINK_ARGS = ["-fopenmp"]


def build_extension() -> Path:
    """Compile _cpu.pyx in place; returns the path of the shared object."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    ext = Extension(
        "bitnet_kernels._cpu",
        sources=[str(PKG / "_cpu.pyx")],
        include_dirs=[str(PKG)],
        depends=[str(PKG / "bk_simd.h"), str(PKG / "bk_pool.h"), str(PKG / "_cpu.pxd")],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=LINK_ARGS,
    )
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        modules = cythonize([ext], language_level=3, quiet=True, force=True)
        dist = Distribution({"name": "bitnet-kernels", "ext_modules": modules, "package_dir": {"": "src"}})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True
        with tempfile.TemporaryDirectory() as tmp:
            cmd.build_temp = tmp
            cmd.ensure_finalized()
            cmd.run()
        return Path(cmd.get_ext_fullpath("bitnet_kernels._cpu")).resolve()
    finally:
        os.chdir(old)


class CythonBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        so = build_extension()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(so)] = f"bitnet_kernels/{so.name}"


if __name__ == "__main__":
    print(build_extension(), file=sys.stderr)
