"""The in-process file descriptor: a device file with a file position, as open(2) gives one.

FreeBSD's file/fd layer (kern_descrip.c) for callers in this process: tests,
the sim transport, machines with neither CUSE nor FUSE.  It keeps the position,
checks the access mode (one rule with the open-time check: devfs.ACCESS_MODES),
waits in poll, and raises the OSErrors a real device file raises.  SimMemory
stands for a caller's address space, so drivers that follow pointers can be
tested in process.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from pykld.kernel.devfs import ACCESS_MODES, MAY_READ, MAY_WRITE
from pykld.kernel.uaccess import check_range

if TYPE_CHECKING:
    from pykld.kernel.file import OpenFile

_READ, _WRITE = MAY_READ, MAY_WRITE


class IoctlResult(NamedTuple):
    """What ioctl(2) gives back: the return value, and the argument as the driver left it."""

    result: int
    data: bytes | None  # the copied-out argument; None when the command copies nothing out


# IoctlResult(result, data) without the Python-level __new__ namedtuple generates
# (a tenth of a small ioctl); the fields are the same.
_ioctl_result = tuple.__new__


class _EventPoller:
    """A poll(2) caller: selwakeup sets the event it waits on."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def notify(self) -> None:
        self.event.set()


class SimFile:
    def __init__(self, file: OpenFile) -> None:
        self.file = file
        # What the access mode and the device allow, fixed at open (fcntl changes neither):
        # the checks pread and pwrite pass on their way, one test for all of them.
        allowed = ACCESS_MODES[file.flags & 3][1]
        self._preadable = file.cdev.seekable and bool(allowed & _READ)
        self._pwritable = file.cdev.seekable and bool(allowed & _WRITE)
        self.position = 0
        self._lock = threading.Lock()  # the position moves atomically, as f_offset does
        # One poller per polling thread, reused: a SelInfo keeps a poller until its next
        # wakeup, so a fresh one per poll() would pile up on an idle device.  Made at the
        # first poll: most opens never poll, and a threading.local costs an open a tenth.
        self._pollers: threading.local | None = None

    # -- the calls of a file descriptor ---------------------------------------------

    def read(self, size: int = 65536) -> bytes:
        self._check_fd(_READ)
        self._check_size(size)
        if not self.file.cdev.seekable:
            return self.file.read(0, size).tobytes()
        with self._lock:
            data = self.file.read(self.position, size).tobytes()
            self.position += len(data)
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check_fd(_WRITE)
        if not self.file.cdev.seekable:
            return self.file.write(0, data)
        with self._lock:
            count = self.file.write(self.position, data)
            self.position += count
        return count

    def pread(self, size: int, offset: int) -> bytes:
        file = self.file
        if self._preadable and size >= 0 and offset >= 0 and not file.closed:
            chunks = file.read(offset, size).chunks  # Uio.tobytes, inline
            if len(chunks) == 1:
                chunk = chunks[0]
                return chunk if type(chunk) is bytes else bytes(chunk)
            return b"".join(chunks)
        self._check_seekable()
        self._check_fd(_READ)
        self._check_size(size)
        self._check_offset(offset)
        return self.file.read(offset, size).tobytes()

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        file = self.file
        if self._pwritable and offset >= 0 and not file.closed:
            return file.write(offset, data)
        self._check_seekable()
        self._check_fd(_WRITE)
        self._check_offset(offset)
        return self.file.write(offset, data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_fd()
        self._check_seekable()
        with self._lock:
            base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position}.get(whence)
            if base is None:
                raise OSError(errno.EINVAL, f"unsupported whence {whence}", None)
            if base + offset < 0:
                raise OSError(errno.EINVAL, "negative file position", None)
            self.position = base + offset
            return self.position

    def ioctl(self, cmd: int, arg: int | bytes | bytearray = 0, memory: Any = None) -> IoctlResult:
        """ioctl(2): `arg` is the integer argument, or the argument buffer of a sized
        command (a bytearray is updated in place when the command copies out, as
        ioctl(2) updates the caller's structure).  Returns the result and the bytes
        copied out (None for commands that copy nothing out).  `memory` (a SimMemory)
        stands for the caller's address space, for drivers that follow pointers."""
        self._check_fd()
        if isinstance(arg, int):
            result, out = self.file.ioctl(cmd, arg, None, memory)
        else:
            result, out = self.file.ioctl(cmd, 0, arg, memory)
        data = bytes(out) if out is not None else None
        if data is not None and isinstance(arg, bytearray):
            arg[: len(data)] = data
        return _ioctl_result(IoctlResult, (result, data))

    def poll(self, events: int, timeout: float | None = 0) -> int:
        """Wait up to `timeout` seconds (None: forever) for any of `events`."""
        self._check_fd()
        deadline = None if timeout is None else time.monotonic() + timeout
        pollers = self._pollers
        if pollers is None:
            # Two first polls at once may each make one; the one not kept only costs its
            # thread a second poller at its next poll.
            pollers = self._pollers = threading.local()
        poller = getattr(pollers, "poller", None)
        if poller is None:
            poller = pollers.poller = _EventPoller()
        while True:
            poller.event.clear()  # before asking the driver, so no wakeup after it is lost
            revents = self.file.poll(events, poller)
            if revents:
                return revents
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return 0
            poller.event.wait(remaining)

    def set_blocking(self, blocking: bool) -> None:
        """fcntl(F_SETFL, O_NONBLOCK) for this file."""
        if blocking:
            self.file.flags &= ~os.O_NONBLOCK
        else:
            self.file.flags |= os.O_NONBLOCK

    def close(self) -> None:
        self.file.close()

    @property
    def closed(self) -> bool:
        return self.file.closed

    def __enter__(self) -> SimFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_fd(self, access: int = 0) -> None:
        """EBADF, as a descriptor gives it: closed, or not opened for this access.
        The driver must never see an operation on a closed file or one the open refused."""
        if self.file.closed:
            raise OSError(errno.EBADF, "file is closed", None)
        if access and not ACCESS_MODES[self.file.flags & 3][1] & access:
            raise OSError(errno.EBADF, "file not open for " + ("reading" if access == _READ else "writing"),
                          None)

    def _check_seekable(self) -> None:
        # pread/pwrite/seek need a position; a stream has none (pipes give ESPIPE).
        if not self.file.cdev.seekable:
            raise OSError(errno.ESPIPE, "illegal seek on a stream device", None)

    @staticmethod
    def _check_size(size: int) -> None:
        if size < 0:
            raise OSError(errno.EINVAL, f"invalid read size {size}", None)

    @staticmethod
    def _check_offset(offset: int) -> None:
        if offset < 0:
            raise OSError(errno.EINVAL, f"invalid offset {offset}", None)


class SimMemory:
    """A pretend caller address space, so sim tests can pass pointers to drivers."""

    def __init__(self) -> None:
        self._regions: dict[int, bytearray] = {}
        self._next = 0x10000

    def alloc(self, data: bytes | int) -> int:
        """Place `data` (or that many zero bytes) in memory; returns its address."""
        block = bytearray(data if isinstance(data, bytes) else bytes(data))
        addr = self._next
        self._regions[addr] = block
        self._next += (len(block) + 0x1000) & ~0xFFF
        return addr

    def _locate(self, addr: int, size: int) -> tuple[bytearray, int]:
        check_range(addr, size)
        for base, block in self._regions.items():
            if base <= addr and addr + size <= base + len(block):
                return block, addr - base
        raise OSError(errno.EFAULT, f"bad address {addr:#x} (+{size})", None)

    def read(self, addr: int, size: int) -> bytes:
        block, start = self._locate(addr, size)
        return bytes(block[start : start + size])

    def read_many(self, iovecs: list[tuple[int, int]]) -> list[bytes]:
        return [self.read(addr, size) for addr, size in iovecs]

    def write(self, addr: int, data: bytes) -> None:
        block, start = self._locate(addr, len(data))
        block[start : start + len(data)] = data
