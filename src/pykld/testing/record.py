"""`pykld record`: publish a device that forwards every operation to an existing device
file (a real one, /dev/ttyUSB0, /dev/urandom, or another pykld device) and writes each,
with its result, to a trace (trace.py).

Each open of the proxy opens the source once, non-blocking, so a caller blocked in
the source can still be interrupted: a blocking caller waits here in short polls that
check for its signal (EINTR) instead of inside read(2).  Ioctls are forwarded by their
_IOC encoding: the encoded size of bytes in and out.  A command with no size gets its
integer argument only when that cannot be a pointer (below 64 KiB, which Linux never
maps); otherwise it is refused with ENOTTY, because forwarding a caller's pointer would
have the source write into this process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import threading
from collections.abc import Callable
from typing import IO, Any

from pykld.kernel.sched import curthread
from pykld.kpi import (
    CharacterDevice,
    Module,
    OpenFile,
    SelInfo,
    Uio,
    ioctl_decode,
    make_dev,
    selrecord,
    selwakeup,
)
from pykld.testing.trace import Op, TraceWriter

WAIT_SLICE_MS = 100  # a blocking caller re-checks for its signal this often
POINTER_FLOOR = 0x10000  # vm.mmap_min_addr: an argument below it is no address


class _Source:
    """One open of the source, for one open of the proxy."""

    def __init__(self, number: int, fd: int) -> None:
        self.number = number
        self.fd = fd
        self.sel = SelInfo()
        self.closed = False
        self.watching = False


class Proxy(CharacterDevice):
    serialized = False  # the source decides what may run at once
    seekable = False

    def __init__(self, source: str, writer: TraceWriter) -> None:
        self.source = source
        self.writer = writer

    def _record(self, op: Op, call: Callable[[], Any]) -> Any:
        """Run `call`, record `op` with its errno if it fails, and re-raise that."""
        try:
            return call()
        except OSError as exc:
            op.error = exc.errno if isinstance(exc.errno, int) else errno.EIO
            self.writer.write(op)
            raise OSError(op.error, exc.strerror or os.strerror(op.error), None) from None

    def open(self, file: OpenFile) -> None:
        op = Op(self.writer.next_file(), "open", events=file.flags & 3)
        flags = (file.flags & 3) | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        fd = self._record(op, lambda: os.open(self.source, flags))
        self.writer.write(op)
        file.private = _Source(op.file, fd)

    def read(self, file: OpenFile, uio: Uio) -> None:
        src: _Source = file.private
        op = Op(src.number, "read", size=uio.resid)
        data: bytes = self._record(op, lambda: _waiting(file, src.fd, select.POLLIN, lambda: os.read(src.fd, op.size)))
        op.result, op.out = len(data), data
        self.writer.write(op)
        uio.uiomove(data)

    def write(self, file: OpenFile, uio: Uio) -> None:
        src: _Source = file.private
        data = uio.move_in()
        op = Op(src.number, "write", data=data)
        count: int = self._record(op, lambda: _waiting(file, src.fd, select.POLLOUT, lambda: os.write(src.fd, data)))
        op.result = count
        self.writer.write(op)
        give_back(uio, len(data) - count)

    def ioctl(self, file: OpenFile, cmd: int, data: bytearray | int) -> int:
        src: _Source = file.private
        op = Op(src.number, "ioctl", cmd=cmd)
        decoded = ioctl_decode(cmd)
        if isinstance(data, bytearray):
            if decoded.copies_in:
                op.data = bytes(data)
            result: int = self._record(op, lambda: fcntl.ioctl(src.fd, cmd, data, True))
            if decoded.copies_out:
                op.out = bytes(data)
        else:
            op.arg = data
            if data >= POINTER_FLOOR or data < 0:
                def refuse() -> int:
                    raise OSError(errno.ENOTTY, f"ioctl {cmd:#x} has no size and its argument may be a pointer",
                                  None)
                self._record(op, refuse)
            result = self._record(op, lambda: fcntl.ioctl(src.fd, cmd, data))
        op.result = result
        self.writer.write(op)
        return result

    def poll(self, file: OpenFile, events: int) -> int:
        src: _Source = file.private
        poller = select.poll()
        poller.register(src.fd, events)
        ready = poller.poll(0)
        revents = ready[0][1] if ready else 0
        if not revents:
            selrecord(src.sel)
            _watch(src, events)
        self.writer.write(Op(src.number, "poll", events=events, result=revents))
        return revents

    def close(self, file: OpenFile) -> None:
        src: _Source = file.private
        src.closed = True
        op = Op(src.number, "close")
        self._record(op, lambda: os.close(src.fd))
        self.writer.write(op)


def _waiting(file: OpenFile, fd: int, events: int, call: Callable[[], Any]) -> Any:
    """`call` on the non-blocking source; for a blocking caller, wait until it can
    go on, as the caller's own read(2) would, but interruptibly."""
    poller = select.poll()
    poller.register(fd, events)
    while True:
        try:
            return call()
        except BlockingIOError:
            if file.nonblock:
                raise
        td = curthread()
        while not poller.poll(WAIT_SLICE_MS):
            if td is not None and td.interrupted:
                raise OSError(td.interrupted, "interrupted", None)


def give_back(uio: Uio, count: int) -> None:
    """Return the `count` bytes a short write did not take to the caller's side of the uio."""
    if count:
        uio.resid += count
        uio.offset -= count
        uio._pos -= count  # noqa: SLF001 - the uio's own cursor; move_in has no inverse


def _watch(src: _Source, events: int) -> None:
    """Wake the proxy's pollers when the source becomes ready (one watcher per open)."""
    if src.watching:
        return
    src.watching = True

    def watch() -> None:
        poller = select.poll()
        poller.register(src.fd, events)
        try:
            while not src.closed and not poller.poll(WAIT_SLICE_MS):
                pass
        finally:
            src.watching = False
            selwakeup(src.sel)

    threading.Thread(target=watch, name=f"record-watch-{src.number}", daemon=True).start()


def recorder(source: str, name: str, stream: IO[str]) -> type[Module]:
    """The module `pykld record` loads: NAME, a proxy of SOURCE, traced to `stream`."""
    mode = os.stat(source).st_mode & 0o777

    class Record(Module):
        def load(self) -> None:
            self.device = Proxy(source, TraceWriter(stream, source, name))
            self.cdev = make_dev(self.device, name, mode=mode)

        def unload(self) -> None:
            self.cdev.destroy()

    Record.name = "record"
    return Record
