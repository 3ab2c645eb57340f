"""malloc(9): allocations accounted per malloc type, with an optional limit.

Memory is a bytearray a driver owns.  What matters here is the accounting a
FreeBSD driver gets from malloc(9) and vmstat -m: bytes in use per type, the
high-water mark, failures, and a limit that turns growth into ENOMEM (M_WAITOK)
or None (M_NOWAIT) instead of a crash.
"""

from __future__ import annotations

import errno
import threading
import weakref
from dataclasses import dataclass
from typing import NamedTuple

M_WAITOK = 0x0002
M_NOWAIT = 0x0001
M_ZERO = 0x0100


class MallocStat(NamedTuple):
    name: str
    inuse: int  # bytes
    allocations: int  # live allocations
    requests: int
    failures: int
    highwater: int
    limit: int | None


class MallocType:
    """MALLOC_DEFINE(9): a named account of memory, optionally capped at `limit` bytes."""

    def __init__(self, name: str, limit: int | None = None, description: str = "") -> None:
        if limit is not None and limit < 0:
            raise ValueError("a malloc limit must not be negative")
        self.name = name
        self.limit = limit
        self.description = description or name
        self._lock = threading.Lock()
        self.inuse = 0
        self.allocations = 0
        self.requests = 0
        self.failures = 0
        self.highwater = 0

    def _charge(self, delta: int, count: int) -> bool:
        with self._lock:
            self.requests += 1
            if delta > 0 and self.limit is not None and self.inuse + delta > self.limit:
                self.failures += 1
                return False
            self.inuse += delta
            self.allocations += count
            self.highwater = max(self.highwater, self.inuse)
            return True

    def _credit(self, size: int) -> None:
        with self._lock:
            self.inuse -= size
            self.allocations -= 1

    def stat(self) -> MallocStat:
        with self._lock:
            return MallocStat(
                self.name, self.inuse, self.allocations, self.requests, self.failures,
                self.highwater, self.limit,
            )

    def __repr__(self) -> str:
        return f"MallocType({self.name!r}, limit={self.limit})"


@dataclass
class _Account:
    mtype: MallocType
    size: int
    freed: bool = False

    def release(self) -> None:
        if not self.freed:
            self.freed = True
            self.mtype._credit(self.size)


class Memory(bytearray):
    """An allocation: a bytearray that knows its malloc type.

    Dropping the last reference gives the bytes back to the account, as free()
    does; free() says so explicitly.
    """

    _account: _Account
    __slots__ = ("_account", "__weakref__")

    @property
    def mtype(self) -> MallocType:
        return self._account.mtype


def _fail(flags: int, mtype: MallocType, size: int) -> Memory | None:
    if flags & M_NOWAIT:
        return None
    raise OSError(errno.ENOMEM, f"malloc type {mtype.name!r}: {size} bytes would pass its limit of "
                                f"{mtype.limit}", None)


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 0:
        raise OSError(errno.EINVAL, f"malloc: invalid size {size!r}")


def malloc(size: int, mtype: MallocType, flags: int = M_WAITOK) -> Memory | None:
    """Allocate `size` bytes charged to `mtype`.

    Past the type's limit (or when the host has no memory) M_NOWAIT returns None and
    M_WAITOK raises OSError(ENOMEM).  The bytes are zero whether or not M_ZERO is
    given: Python has no uninitialised memory to hand out.
    """
    _check_size(size)
    if not mtype._charge(size, 1):
        return _fail(flags, mtype, size)
    try:
        mem = Memory(size)
    except MemoryError:
        mtype._credit(size)
        return _fail(flags, mtype, size)
    account = _Account(mtype, size)
    mem._account = account
    weakref.finalize(mem, account.release)
    return mem


def realloc(mem: Memory, size: int, flags: int = M_WAITOK) -> Memory | None:
    """Resize `mem` in place; growth is charged first, so a refusal leaves it unchanged."""
    _check_size(size)
    account = mem._account
    delta = size - account.size
    if delta > 0 and not account.mtype._charge(delta, 0):
        return _fail(flags, account.mtype, size)
    if delta < 0:
        account.mtype._charge(delta, 0)
    old = account.size
    try:
        if delta > 0:
            mem.extend(bytes(delta))
        else:
            del mem[size:]
    except MemoryError:
        account.mtype._charge(-delta, 0)
        del mem[old:]
        return _fail(flags, account.mtype, size)
    account.size = size
    return mem


def free(mem: Memory) -> None:
    """Give the allocation back to its type's account and empty it."""
    mem._account.release()
    del mem[:]
