"""The caller's address space, for drivers that follow pointers (copyin/copyout(9)).

Only an unrestricted-ioctl transport (CUSE) can reach caller memory.  It does
so in rounds: when a driver touches memory the transport has not fetched yet,
a read raises NeedIovecs, the operation unwinds, the transport asks the kernel
for those ranges (FUSE_IOCTL_RETRY) and runs the operation again.  So a driver
does its copyins before it changes anything.
"""

from __future__ import annotations

import errno
from typing import Protocol

Iovec = tuple[int, int]  # (address, length)


class UserMemory(Protocol):
    def read(self, addr: int, size: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class NeedIovecs(BaseException):
    """Raised through a driver when it touched caller memory not fetched yet.

    A BaseException, like KeyboardInterrupt: a driver's defensive `except
    Exception:` must not turn the kernel's retry into the driver's own error."""

    def __init__(self, reads: list[Iovec]) -> None:
        super().__init__(f"need caller memory: {reads}")
        self.reads = reads


def _covers(regions: list[Iovec], addr: int, size: int) -> int | None:
    """Index of the region that holds [addr, addr+size), if any."""
    for index, (base, length) in enumerate(regions):
        if base <= addr and addr + size <= base + length:
            return index
    return None


class IovecMemory:
    """Caller memory in the retry protocol: the ranges fetched so far, and the writes.

    A read of a range not fetched yet raises NeedIovecs (the operation is run
    again once the kernel sent it).  Writes never need a second run: they are
    recorded, in order, and sent back as the ioctl's out-iovecs, which the
    kernel copies to the caller in that order.
    """

    def __init__(self, reads: list[Iovec], data: bytes | memoryview) -> None:
        self.reads = reads
        self._in: list[bytes] = []
        pos = 0
        for _, length in reads:
            self._in.append(bytes(data[pos : pos + length]))
            pos += length
        self.writes: list[tuple[int, bytes]] = []

    def read(self, addr: int, size: int) -> bytes:
        check_range(addr, size)
        index = _covers(self.reads, addr, size)
        if index is None:
            raise NeedIovecs([(addr, size)])
        start = addr - self.reads[index][0]
        return self._in[index][start : start + size]

    def write(self, addr: int, data: bytes) -> None:
        check_range(addr, len(data))
        if data:
            self.writes.append((addr, bytes(data)))


def check_range(addr: int, size: int) -> None:
    if addr <= 0 or size < 0 or addr + size > 1 << 64:
        raise OSError(errno.EFAULT, f"bad address {addr:#x} (+{size})", None)
