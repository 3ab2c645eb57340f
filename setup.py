"""The build of pykld's optional C extension, pykld._loop (the compiled request loop).

Everything else is in pyproject.toml.  A machine without a C compiler or the
Python headers still installs pykld: the build warns and pykld runs its Python
loop (PYKLD_LOOP, transport/loop.py), unless PYKLD_REQUIRE_COMPILED_LOOP=1 makes
the failure an error.
"""

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXT = "src/pykld/_ext"


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self._skipped(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skipped(exc)

    def _skipped(self, exc: Exception) -> None:
        if os.environ.get("PYKLD_REQUIRE_COMPILED_LOOP") == "1":
            raise exc
        print(f"WARNING: pykld._loop (the compiled request loop) was not built: {exc}; "
              "pykld will run its Python request loop", file=sys.stderr)


setup(
    ext_modules=[Extension(
        "pykld._loop",
        # uring.c (FUSE over io_uring, transport/uring.py) too: its ring threads serve
        # through dispatch.c directly
        sources=sorted(glob.glob(f"{EXT}/*.c")),
        depends=sorted(glob.glob(f"{EXT}/*.h")),
        extra_compile_args=["-Wall", "-Wno-missing-braces"],
    )],
    cmdclass={"build_ext": OptionalBuildExt},
)
