"""Which request loop serves the FUSE and CUSE channels: ``PYKLD_LOOP=compiled|python``.

compiled: pykld._loop, the C extension built by ``pip install`` (src/pykld/_ext/):
it reads, decodes and answers the common requests in C and enters Python only
for the driver's operation.  python: Session's own loop, the reference.  The
default is compiled when the extension imports, else python; dmesg says once
which loop serves and why.  Asking for compiled without the extension is an error.
"""

from __future__ import annotations

import errno
import importlib
import os
from types import ModuleType

COMPILED = "compiled"
PYTHON = "python"
_announced: set[str] = set()


def _extension() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module("pykld._loop"), ""
    except ImportError as exc:
        return None, str(exc)


def choose() -> tuple[ModuleType | None, str]:
    """(the extension module or None for the Python loop, why), from PYKLD_LOOP."""
    wanted = os.environ.get("PYKLD_LOOP", "").strip().lower()
    if wanted not in ("", COMPILED, PYTHON):
        raise OSError(errno.EINVAL, f"PYKLD_LOOP={wanted}: expected {COMPILED} or {PYTHON}", None)
    if wanted == PYTHON:
        return None, "the Python request loop serves (PYKLD_LOOP=python)"
    module, failure = _extension()
    if module is not None:
        why = "PYKLD_LOOP=compiled" if wanted else "the default: pykld._loop is installed"
        return module, f"the compiled request loop serves ({why})"
    if wanted == COMPILED:
        raise OSError(errno.ELIBACC, f"PYKLD_LOOP=compiled, but the compiled request loop pykld._loop is missing"
                      f" ({failure}): reinstall pykld with a C compiler and python3-dev, or set PYKLD_LOOP=python",
                      None)
    return None, f"the Python request loop serves (pykld._loop is missing: {failure})"


def announce(why: str, log: object) -> None:
    """Say in dmesg, once per process and verdict, which loop serves."""
    if why not in _announced and callable(log):
        _announced.add(why)
        log(why)
