"""Open files and the dispatch of their operations to drivers.

Every transport ends here: it turns a caller's system call into one of these
methods.  Here, and only here, the device lock is taken, curthread is set, the
counters move, and a driver's exception is contained: an OSError passes its
errno to the caller, anything else costs that caller EIO and leaves a
traceback in dmesg, and the kernel goes on serving.
"""

from __future__ import annotations

import errno
import os
import select
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from pykld.kernel import fail, ioccom
from pykld.kernel.fault import caller_error
from pykld.kernel.sched import Thread, seat, seats
from pykld.kernel.uaccess import UserMemory
from pykld.kernel.uio import Buffer, Uio, UioRw

if TYPE_CHECKING:
    from pykld.kernel.devfs import Cdev
    from pykld.kernel.kernel import Kernel
    from pykld.kernel.sched import Poller

_count_lock = threading.Lock()
_closed = threading.Condition(_count_lock)  # notified at a close while someone waits for closes
_close_waiters = 0  # threads in wait_for_closes: only then does a close pay for notify_all
_O_NONBLOCK = os.O_NONBLOCK
_UIO_READ = UioRw.READ
_IOC_IN, _IOC_OUT = ioccom.IOC_IN, ioccom.IOC_OUT
_NO_ARG: Any = object()  # an argument _run does not pass



class OpenFile:
    """One open of a device (a struct file plus its cdevpriv)."""

    __slots__ = ("kernel", "cdev", "flags", "uid", "gids", "pid", "private", "closed", "_spare")

    def __init__(self, kernel: Kernel, cdev: Cdev, flags: int, uid: int, gids: tuple[int, ...],
                 pid: int) -> None:
        self.kernel = kernel
        self.cdev = cdev
        self.flags = flags
        self.uid = uid
        self.gids = gids
        self.pid = pid
        self.private: Any = None  # per-open driver state (devfs_set_cdevpriv)
        self.closed = False
        # The Threads of operations whose caller brings none (in-process callers): made
        # once and reused, one per operation running at a time, as FreeBSD reuses a
        # thread's struct thread from one system call to the next.  A fresh one per
        # call cost a sixth of a 4 KiB read.  Per open, so kernel and module stay set.
        self._spare: list[Thread] = []

    @property
    def nonblock(self) -> bool:
        """O_NONBLOCK as the caller has it now (fcntl(F_SETFL) after open included)."""
        return bool(self.flags & os.O_NONBLOCK)

    def _run(self, td: Thread | None, op: str, fn: Callable[..., Any], flags: int | None,
             memory: UserMemory | None = None, poller: Poller | None = None,
             a: Any = _NO_ARG, b: Any = _NO_ARG) -> Any:
        """Run the driver's operation `fn` (named `op`) on this file with the arguments
        given of `a`, `b`, under the rule of kernel/fault.py, with the device lock unless
        the driver locks for itself.  `memory` and `poller` become the thread's for this
        operation (ioctl, poll).  Fixed arguments, not *args: on every request, a packed
        and unpacked tuple cost as much as the lock."""
        cdev = self.cdev
        if cdev.destroyed:
            raise OSError(errno.ENXIO, f"{cdev.path} is gone", None)
        spare = None
        if td is None:
            spare = self._spare
            try:
                td = spare.pop()  # atomic: two operations never share one
                td.interrupted = 0  # an interrupt aimed at its last operation
            except IndexError:
                td = Thread(self.kernel, cdev.module)
        else:
            td.kernel = self.kernel
            td.module = cdev.module
        td.memory = memory
        td.poller = poller
        if flags is not None and (flags ^ self.flags) & _O_NONBLOCK:
            self.flags ^= _O_NONBLOCK  # fcntl(F_SETFL) since open: the file's flags follow, as f_flag does
        td.nonblock = (self.flags & _O_NONBLOCK) != 0
        try:
            here = seats.seat  # sched.enter(td), inline
        except AttributeError:
            here = seat()
        before = here.td
        here.td = td
        active = cdev.active
        active.add(td)
        lock = cdev.lock
        try:
            if lock is not None:
                try:
                    lock.token.pop()  # DeviceLock.acquire(False), inline
                except IndexError:
                    if td.before_block is not None:
                        td.before_block()  # another operation holds the device: we may wait a while
                    lock.acquire()
                td.lock = lock
            try:
                if cdev.destroyed:
                    # Destroyed before this thread joined `active` (destroy() did not see it
                    # to interrupt it, so a sleep would never end), or while it waited for the lock.
                    raise OSError(errno.ENXIO, f"{cdev.path} is gone", None)
                if b is not _NO_ARG:
                    return fn(self, a, b)
                if a is not _NO_ARG:
                    return fn(self, a)
                return fn(self)
            finally:
                if lock is not None:
                    lock.token.append(True)  # DeviceLock.release(), inline
                    if lock.waiting:
                        lock.wake()
        except BaseException as exc:
            raise caller_error(exc, self.kernel, cdev.module, op, cdev.path, cdev.stats)  # noqa: B904
        finally:
            active.discard(td)
            if cdev.destroyed:  # destroy_dev may be waiting for the driver to empty
                with cdev.drained:
                    cdev.drained.notify_all()
            here.td = before
            if spare is not None:
                spare.append(td)

    def read(self, offset: int, size: int, flags: int | None = None, td: Thread | None = None) -> Uio:
        cdev = self.cdev
        rule = fail.fire(self, "read", td) if cdev.failpoints else None
        if rule is not None and rule.action == "short":
            size = min(size, int(rule.value))
        uio = Uio(_UIO_READ, offset, size)
        result = self._run(td, "read", cdev.ops.read, flags, None, None, uio)
        if result is not None and result != 0:
            self._bad_result("read", result, "None")
        if rule is not None and rule.action == "corrupt":
            uio.chunks = [rule.corrupt(uio.tobytes())]
        stats = cdev.stats
        stats.reads += 1
        stats.bytes_read += size - uio.resid
        return uio

    def write(self, offset: int, data: Buffer, flags: int | None = None, td: Thread | None = None) -> int:
        cdev = self.cdev
        rule = fail.fire(self, "write", td) if cdev.failpoints else None
        if rule is not None:
            data = memoryview(data)[: int(rule.value)] if rule.action == "short" else rule.corrupt(data)
        uio = Uio.for_write(offset, data)
        result = self._run(td, "write", cdev.ops.write, flags, None, None, uio)
        if result is not None and result != 0:
            self._bad_result("write", result, "None")
        done = uio.size - uio.resid
        stats = cdev.stats
        stats.writes += 1
        stats.bytes_written += done
        return done

    def ioctl(self, cmd: int, arg: int = 0, data: Buffer | None = None,
              memory: UserMemory | None = None, td: Thread | None = None) -> tuple[int, bytearray | None]:
        """Run ioctl `cmd`.  Sized commands get a buffer of the encoded size (filled
        from `data` when the command copies in); others get the integer `arg`.
        Returns the result and, for commands that copy out, the buffer."""
        decoded = ioccom.decode(cmd)  # cached: the same few commands come again and again
        size = decoded.size
        copies_out = decoded.direction & _IOC_OUT
        buf: bytearray | None = None
        if size:
            buf = bytearray(size)
            if decoded.direction & _IOC_IN:
                if data is None or len(data) < size:
                    raise OSError(errno.EFAULT, "ioctl argument shorter than its encoded size", None)
                buf[:] = memoryview(data)[:size]
        cdev = self.cdev
        rule = fail.fire(self, "ioctl", td, cmd) if cdev.failpoints else None
        corrupt_out = rule is not None and buf is not None and copies_out
        if rule is not None and buf is not None and not corrupt_out:
            buf[:] = rule.corrupt(buf)
        result = self._run(td, "ioctl", cdev.ops.ioctl, None, memory, None, cmd, buf if buf is not None else arg)
        if corrupt_out:
            assert rule is not None and buf is not None
            buf[:] = rule.corrupt(buf)
        cdev.stats.ioctls += 1
        if result is None:
            result = 0
        elif type(result) is not int and not isinstance(result, int):
            self._bad_result("ioctl", result)
        return result, buf if copies_out else None

    def poll(self, events: int, poller: Poller | None = None, td: Thread | None = None) -> int:
        cdev = self.cdev
        if cdev.failpoints:
            try:
                fail.fire(self, "poll", td)
            except OSError as exc:
                if exc.errno == errno.EINTR or exc.errno == errno.ENXIO:
                    raise
                return select.POLLERR  # as a poll whose driver crashed
        if poller is not None:
            cdev.pollers.add(poller)
        revents = self._run(td, "poll", cdev.ops.poll, None, None, poller, events)
        cdev.stats.polls += 1
        if revents is None:
            return 0
        if not isinstance(revents, int):
            self._bad_result("poll", revents)  # int() of it would raise outside containment
        return revents

    def _bad_result(self, op: str, result: Any, expected: str = "an int") -> NoReturn:
        """A driver returned what its operation cannot return: a fault like an exception,
        so the caller gets EIO and dmesg says why."""
        wrong = TypeError(f"{op} returned {result!r:.100}, not {expected}")
        raise caller_error(wrong, self.kernel, self.cdev.module, op, self.cdev.path, self.cdev.stats)

    def close(self, td: Thread | None = None) -> None:
        """Close this open.  On a destroyed device it succeeds without the driver."""
        if self.closed:
            return
        self.closed = True
        cdev = self.cdev
        with _count_lock:
            cdev.open_count -= 1
            if _close_waiters:
                _closed.notify_all()
        if not cdev.destroyed:
            try:
                self._run(td, "close", self.cdev.ops.close, None)
            except OSError as exc:
                # Destroyed while we got here: close still succeeds, without the driver.
                if not (exc.errno == errno.ENXIO and cdev.destroyed):
                    raise
            if cdev.failpoints:
                fail.fire(self, "close", td)  # after the driver's close: the file is closed either way

    def __repr__(self) -> str:
        return f"<OpenFile {self.cdev.path} flags={self.flags:#o}{' closed' if self.closed else ''}>"


def open_cdev(kernel: Kernel, cdev: Cdev, flags: int, uid: int, gids: tuple[int, ...], pid: int,
              check_access: bool = True, td: Thread | None = None) -> OpenFile:
    """d_open: check access, let the driver accept or refuse, then count the open."""
    if cdev.destroyed:
        raise OSError(errno.ENXIO, f"{cdev.path} is gone", None)
    if check_access and not cdev.may_open(uid, gids, flags):
        raise OSError(errno.EACCES, f"{cdev.path}: permission denied", None)
    file = OpenFile(kernel, cdev, flags & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL), uid, gids, pid)
    with _count_lock:
        cdev.open_count += 1  # counted first, so an unload racing this open sees it
    try:
        if cdev.failpoints:
            fail.fire(file, "open", td)
        file._run(td, "open", cdev.ops.open, None)
    except BaseException:
        with _count_lock:
            cdev.open_count -= 1
            if _close_waiters:
                _closed.notify_all()
        raise
    cdev.stats.opens += 1
    return file


def wait_for_closes(done: Callable[[], bool], timeout: float) -> bool:
    """Wait until `done()` (which reads open counts) holds, re-checked at every close
    or failed open; False when `timeout` seconds pass first."""
    global _close_waiters
    with _count_lock:
        _close_waiters += 1
        try:
            return _closed.wait_for(done, timeout)
        finally:
            _close_waiters -= 1



def control_file(kernel: Kernel, cdev: Cdev) -> OpenFile:
    """A transport's own handle on a device it publishes, for ioctls only (the termios
    a pty carries): the driver sees no open or close for it, and it holds no reference
    (like FreeBSD's ttyu0.init, the kernel's side of a port, not a caller's)."""
    return OpenFile(kernel, cdev, 3, 0, (0,), os.getpid())  # O_ACCMODE 3: neither read nor write
