"""Small KPI services: printf(9), copyin/copyout(9), malloc and sysctl(9) bound to the running module."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

from pykld.kernel import malloc as _malloc
from pykld.kernel.malloc import M_WAITOK, MallocType, Memory
from pykld.kernel.sched import curthread
from pykld.kernel.sysctl import SysctlOid
from pykld.kernel.uaccess import UserMemory


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


def _memory() -> UserMemory:
    td = curthread()
    memory = td.memory if td is not None else None
    if memory is None:
        raise OSError(errno.EOPNOTSUPP, "caller memory is not reachable here: over FUSE the daemon needs "
                      "CAP_SYS_PTRACE over the caller (root), or CUSE", None)
    return memory


def copyin(addr: int, size: int) -> bytes:
    """Read `size` bytes at the caller's address `addr` (EFAULT when unmapped)."""
    return _memory().read(addr, size)


def copyin_many(iovecs: list[tuple[int, int]]) -> list[bytes]:
    """Read several (address, size) ranges of the caller's memory at once.  Over CUSE
    they are fetched in one retry round, where a copyin each would cost a round each."""
    return _memory().read_many(list(iovecs))


def copyout(addr: int, data: bytes) -> None:
    """Write `data` to the caller's address `addr` (EFAULT when unmapped)."""
    _memory().write(addr, bytes(data))


def sysctl_add(name: str, kind: str, get: Callable[[], Any], set: Callable[[Any], None] | None = None,
               descr: str = "") -> SysctlOid:
    """sysctl(9): publish node `name` of `kind` ("int", "uint", "bool", "float", "str",
    "hex"), read through `get`; writable when `set` is given, which receives the
    parsed value and may raise OSError(EINVAL) to refuse it.  The node belongs to
    the calling module and is removed at its unload (or by sysctl_remove)."""
    td = curthread()
    if td is None or td.kernel is None:
        raise RuntimeError("sysctl_add() outside a module event or device operation")
    return td.kernel.sysctl_add(SysctlOid(name, kind, descr, get, set, td.module))


def sysctl_remove(oid: SysctlOid) -> None:
    td = curthread()
    if td is None or td.kernel is None:
        raise RuntimeError("sysctl_remove() outside a module event or device operation")
    td.kernel.sysctl_remove(oid)
