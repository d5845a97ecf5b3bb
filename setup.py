"""Builds npuquant's native operators: C kernels (csrc/*.c) behind thin C++ wrappers (csrc/*.cpp)
that register them as torch operators through the LibTorch stable ABI.

One shared object, ``npuquant/_C.abi3.so``, loaded with ``torch.ops.load_library``. Built against
the stable ABI at TORCH_TARGET_VERSION, it serves every torch from that release on. SIMD variants
are compiled through per-function target attributes, so the baseline build runs on any x86-64 (or
other) CPU and the fast paths are picked at run time from the CPU's features.
"""

import glob
import os
import platform

from setuptools import setup
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.sysconfig import customize_compiler
from torch.utils.cpp_extension import BuildExtension, CppExtension

# The stable ABI floor: torch 2.10 (pyproject.toml's torch requirement says the same).
TORCH_TARGET_VERSION = "0x020a000000000000"

C_FLAGS = ["-O3", "-std=c11", "-fno-strict-aliasing", "-ffp-contract=off", "-fvisibility=hidden", "-pthread"]
CXX_FLAGS = ["-O2", "-std=c++17", "-fvisibility=hidden", f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION}"]
LINK_FLAGS = ["-pthread"]
if platform.machine().lower() in ("x86_64", "amd64"):
    C_FLAGS.append("-mtune=generic")
# NPUQUANT_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer build (scripts/sanitize.sh), any report fatal.
if os.environ.get("NPUQUANT_SANITIZE", "") not in ("", "0"):
    SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
    C_FLAGS += SANITIZE
    CXX_FLAGS += SANITIZE
    LINK_FLAGS += ["-fsanitize=address,undefined"]


class Build(BuildExtension):
    """Compiles the C kernels with C flags (BuildExtension would give them C++ ones), then links them in."""

    def build_extension(self, ext):
        c_sources = getattr(ext, "c_sources", [])
        if c_sources:
            cc = new_compiler()  # a plain C compiler: BuildExtension's own compiles .c files as C++
            customize_compiler(cc)
            objects = cc.object_filenames(c_sources, output_dir=self.build_temp)
            header = max(os.path.getmtime(h) for h in glob.glob("csrc/*.h"))  # npq.h, simd.h
            stale = [
                src
                for src, obj in zip(c_sources, objects)
                if not os.path.exists(obj) or os.path.getmtime(obj) < max(os.path.getmtime(src), header)
            ]
            if stale:  # only what changed: the kernels take most of the build time
                cc.compile(stale, output_dir=self.build_temp, include_dirs=["csrc"], extra_postargs=C_FLAGS)
            ext.extra_objects = objects
        super().build_extension(ext)


extension = CppExtension(
    "npuquant._C",
    sources=sorted(glob.glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    extra_compile_args={"cxx": CXX_FLAGS},
    extra_link_args=LINK_FLAGS,
    py_limited_api=True,
)
extension.c_sources = sorted(glob.glob("csrc/*.c"))

setup(
    ext_modules=[extension],
    cmdclass={"build_ext": Build},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
