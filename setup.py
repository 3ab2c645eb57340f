"""Builds pykld's optional C extensions; a failed build warns and pykld runs without them."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # no compiler, no Python headers: pykld still works
            print(f"WARNING: {ext.name} not built ({exc}); pykld runs without it")


setup(
    ext_modules=[Extension("pykld._uring", ["src/pykld/_ext/uring.c"], extra_compile_args=["-O2", "-Wall"])],
    cmdclass={"build_ext": OptionalBuildExt},
)
