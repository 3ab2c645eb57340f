"""The caller's address space, for drivers that follow pointers (copyin/copyout(9)).

Two transports reach caller memory.  FUSE, whose ioctls are restricted, reads
and writes the calling process directly (ProcessMemory, process_vm_readv(2)),
where the daemon may: the caller is blocked in ioctl(2) meanwhile, as under
copy_from_user.  CUSE has the kernel copy it, in rounds: when a driver touches memory the transport has not fetched yet,
a read raises NeedIovecs, the operation unwinds, the transport asks the kernel
for those ranges (FUSE_IOCTL_RETRY) and runs the operation again.  So a driver
does its copyins before it changes anything.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, Protocol

Iovec = tuple[int, int]  # (address, length)


class UserMemory(Protocol):
    def read(self, addr: int, size: int) -> bytes: ...

    def read_many(self, iovecs: list[Iovec]) -> list[bytes]: ...

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

    def read_many(self, iovecs: list[Iovec]) -> list[bytes]:
        """All of `iovecs`, or NeedIovecs for every one not fetched yet: one round for all."""
        for addr, size in iovecs:
            check_range(addr, size)
        missing = [(addr, size) for addr, size in iovecs if size and _covers(self.reads, addr, size) is None]
        if missing:
            raise NeedIovecs(list(dict.fromkeys(missing)))
        return [self.read(addr, size) if size else b"" for addr, size in iovecs]

    def write(self, addr: int, data: bytes) -> None:
        check_range(addr, len(data))
        if data:
            self.writes.append((addr, bytes(data)))


def check_range(addr: int, size: int) -> None:
    if addr <= 0 or size < 0 or addr + size > 1 << 64:
        raise OSError(errno.EFAULT, f"bad address {addr:#x} (+{size})", None)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)


class ProcessMemory:
    """The address space of the process that made this request (FUSE's header pid,
    never the opener's: a descriptor is shared across fork and threads)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self, addr: int, size: int) -> bytes:
        return self.read_many([(addr, size)])[0]

    def read_many(self, iovecs: list[Iovec]) -> list[bytes]:
        for addr, size in iovecs:
            check_range(addr, size)
        buffers = [ctypes.create_string_buffer(size) for _, size in iovecs]
        local = (_IoVec * len(iovecs))(*[_IoVec(ctypes.addressof(b), len(b)) for b in buffers])
        remote = (_IoVec * len(iovecs))(*[_IoVec(addr, size) for addr, size in iovecs])
        self._transfer(_libc.process_vm_readv, local, remote, sum(size for _, size in iovecs), iovecs)
        return [b.raw for b in buffers]

    def write(self, addr: int, data: bytes) -> None:
        check_range(addr, len(data))
        if not data:
            return
        buffer = ctypes.create_string_buffer(bytes(data), len(data))
        local = (_IoVec * 1)(_IoVec(ctypes.addressof(buffer), len(data)))
        remote = (_IoVec * 1)(_IoVec(addr, len(data)))
        self._transfer(_libc.process_vm_writev, local, remote, len(data), [(addr, len(data))])

    def _transfer(self, call: Any, local: ctypes.Array[_IoVec], remote: ctypes.Array[_IoVec],
                  total: int, iovecs: list[Iovec]) -> None:
        done = call(self.pid, local, len(local), remote, len(remote), 0)
        if done == total:
            return
        code = ctypes.get_errno() if done < 0 else errno.EFAULT  # a short transfer: part is unmapped
        where = ", ".join(f"{addr:#x} (+{size})" for addr, size in iovecs)
        if code in (errno.EPERM, errno.EACCES):
            raise OSError(errno.EOPNOTSUPP, f"caller memory is not reachable: pid {self.pid} may not be traced "
                          "by the daemon (it needs CAP_SYS_PTRACE over the caller)", None)
        if code == errno.ESRCH:
            raise OSError(errno.EFAULT, f"the caller (pid {self.pid}) is gone", None)
        raise OSError(errno.EFAULT, f"bad address {where}: {os.strerror(code)}", None)
