"""Builds npuquant's native kernels: plain C, no libtorch, loaded with ctypes.

Every source in csrc/ goes into one shared object. SIMD variants are compiled through
per-function target attributes, so the baseline build runs on any x86-64 (or other) CPU
and the fast paths are picked at run time from the CPU's features.
"""
import glob
import platform

from setuptools import Extension, setup

cflags = ["-O3", "-std=c11", "-fno-strict-aliasing", "-ffp-contract=off", "-fvisibility=hidden", "-pthread"]
if platform.machine().lower() in ("x86_64", "amd64"):
    cflags.append("-mtune=generic")

setup(
    ext_modules=[
        Extension(
            "npuquant._npuquant_c",
            sources=sorted(glob.glob("csrc/*.c")),
            include_dirs=["csrc"],
            extra_compile_args=cflags,
            extra_link_args=["-pthread"],
        )
    ]
)
