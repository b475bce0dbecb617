"""Builds the optional C++ kernel extension sparseflow.inference.kernels._spmm (plain CPython API, no build deps
beyond setuptools). Instruction sets are selected at run time, so the build uses no -march flag.
If the compiler is missing the package still installs and falls back to torch's CSR kernels."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any compiler failure means: install without the extension
            print(f"warning: sparseflow kernels not built ({e}); the torch CSR fallback will be used")

    def build_extension(self, ext):
        # Threads through OpenMP: at run time the extension shares the OpenMP runtime PyTorch loaded (same
        # soname), so its threads are PyTorch's warm workers. Without OpenMP the kernels start std::threads.
        try:
            super().build_extension(ext)
            return
        except Exception as e:  # noqa: BLE001
            failure = e
        if "-fopenmp" in ext.extra_compile_args:
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a != "-fopenmp"]
            ext.extra_link_args = [a for a in ext.extra_link_args if a != "-fopenmp"]
            print(f"warning: sparseflow kernels: OpenMP build failed ({failure}); building with std::thread")
            try:
                super().build_extension(ext)
                return
            except Exception as e:  # noqa: BLE001
                failure = e
        print(f"warning: sparseflow kernels not built ({failure}); the torch CSR fallback will be used")


setup(
    ext_modules=[Extension(
        "sparseflow.inference.kernels._spmm",
        sources=["src/sparseflow/inference/kernels/_spmm.cpp"],
        depends=["src/sparseflow/inference/kernels/impl.h", "src/sparseflow/inference/kernels/sddmm.h"],
        extra_compile_args=["-O3", "-std=c++17", "-fno-math-errno", "-fopenmp"],
        extra_link_args=["-fopenmp"],
        language="c++",
    )],
    cmdclass={"build_ext": OptionalBuildExt},
)
