"""Small KPI services: printf(9), copyin/copyout(9) and malloc bound to the running module."""

from __future__ import annotations

import errno
import sys

from pykld.kernel import malloc as _malloc
from pykld.kernel.malloc import M_WAITOK, MallocType, Memory
from pykld.kernel.sched import curthread


def printf(text: str) -> None:
    """Write a line to the message buffer (`pykld dmesg`), tagged with the module."""
    td = curthread()
    if td is None or td.kernel is None:
        print(f"pykld: {text}", file=sys.stderr)  # a driver's own thread: no kernel to tell
        return
    td.kernel.printf(td.module.name if td.module is not None else "kernel", text)


def malloc(size: int, mtype: MallocType, flags: int = M_WAITOK) -> Memory | None:
    """malloc(9): `size` zeroed bytes charged to `mtype` (see pykld.kernel.malloc)."""
    td = curthread()
    if td is not None and td.module is not None and mtype not in td.module.malloc_types:
        td.module.malloc_types.append(mtype)  # shown by vmstat -m even if defined off-module
    return _malloc.malloc(size, mtype, flags)


def _memory() -> object:
    td = curthread()
    memory = td.memory if td is not None else None
    if memory is None:
        raise OSError(errno.EOPNOTSUPP,
                      "caller memory is reachable only through an unrestricted-ioctl transport (CUSE)", None)
    return memory


def copyin(addr: int, size: int) -> bytes:
    """Read `size` bytes at the caller's address `addr` (EFAULT when unmapped)."""
    return _memory().read(addr, size)  # type: ignore[attr-defined, no-any-return]


def copyout(addr: int, data: bytes) -> None:
    """Write `data` to the caller's address `addr` (EFAULT when unmapped)."""
    _memory().write(addr, bytes(data))  # type: ignore[attr-defined]
