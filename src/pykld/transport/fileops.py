"""The file operations FUSE and CUSE share: read, write, ioctl, poll, release, interrupt.

Each turns one decoded request into a call on the kernel's open file and an
encoded reply.  The open-file table maps the kernel's file handle numbers
(fh) to the kernel's files; the in-flight table maps request ids to the
kernel threads serving them, so a FUSE_INTERRUPT reaches the right sleeper.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pykld.fuse import abi, notify, reply
from pykld.fuse.request import ReadIo, Request, WriteIo
from pykld.kernel.sched import Thread
from pykld.kernel.uaccess import ProcessMemory
from pykld.kernel.uio import Buffer

if TYPE_CHECKING:
    from pykld.kernel.devfs import Cdev
    from pykld.kernel.file import OpenFile
    from pykld.kernel.kernel import Kernel
    from pykld.transport.session import Reply, Session

_EARLY_INTERRUPTS = 256  # interrupts remembered for requests not seen yet


class FusePoller:
    """A poll caller on the far side of the kernel: selwakeup sends FUSE_NOTIFY_POLL."""

    __slots__ = ("session", "kh", "__weakref__")

    def __init__(self, session: Session, kh: int) -> None:
        self.session = session
        self.kh = kh

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FusePoller) and other.kh == self.kh

    def __hash__(self) -> int:
        return hash(self.kh)

    def notify(self) -> None:
        self.session.send(notify.poll(self.kh))


class FileOps:
    """Request handlers for operations on open files; subclasses add opening and
    extend handlers() (opcode -> handler), the table their Session dispatches by."""

    session: Session

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.files: dict[int, OpenFile] = {}
        self._fhs = itertools.count(1)
        self._inflight: dict[int, Thread] = {}
        self._early: OrderedDict[int, None] = OrderedDict()
        self._early_lock = threading.Lock()
        # Where each open stands, for transports whose kernel side passes no
        # offsets (CUSE); None where the kernel passes the caller's.
        self.positions: dict[int, int] | None = None
        self._ensure_reader: Callable[[], None] | None = None
        # Restricted ioctls copy only what their number encodes; drivers that follow
        # pointers reach the caller through process_vm_readv, unless turned off.
        self.process_memory = os.environ.get("PYKLD_FUSE_USER_MEMORY", "ptrace") != "off"

    def log(self, text: str) -> None:
        self.kernel.printf("kernel", text)

    # -- bookkeeping -------------------------------------------------------------------

    def _thread(self, unique: int) -> Thread:
        """The kernel thread for request `unique`, findable by FUSE_INTERRUPT."""
        td = Thread()
        td.before_block = self._ensure_reader
        self._inflight[unique] = td
        if self._early:
            with self._early_lock:
                if self._early.pop(unique, 0) is None:
                    td.interrupt(errno.EINTR)
        return td

    def attach(self, session: Session) -> None:
        self.session = session
        self._ensure_reader = session.ensure_reader

    def _file(self, fh: int) -> OpenFile:
        file = self.files.get(fh)
        if file is None:
            raise OSError(errno.EBADF, f"no open file {fh}", None)
        return file

    def open_cdev(self, req: Request, cdev: Cdev, flags: int) -> tuple[int, OpenFile]:
        """Open `cdev` for the caller of `req`; the kernel checked permissions already."""
        return self.open_for(req.unique, cdev, flags, req.uid, req.gid, req.pid)

    def open_for(self, unique: int, cdev: Cdev, flags: int, uid: int, gid: int, pid: int) -> tuple[int, OpenFile]:
        """open_cdev from the fields of request `unique`, as the compiled loop has them."""
        td = self._thread(unique)
        try:
            file = self.kernel.open_cdev(cdev, flags, uid, (gid,), pid, False, td=td)
        finally:
            self._inflight.pop(unique, None)
        fh = next(self._fhs)
        self.files[fh] = file
        return fh, file

    @staticmethod
    def open_flags(cdev: Cdev) -> int:
        """Device semantics: no page cache, and no offsets for streams.

        FOPEN_NOFLUSH: close(2) must not wait for us.  A FLUSH per close is a round
        trip the driver has no use for (its close runs at RELEASE), and it can
        deadlock a process that serves FUSE itself: a child it spawns closes the
        inherited descriptors, each close sends FLUSH, and on CPython before
        3.11.4 (Debian 12's 3.11.2) the parent holds the GIL through vfork() until
        the child execs, so no server thread can answer (gh-104372).

        FOPEN_PARALLEL_DIRECT_WRITES, for streams: FUSE holds the file's inode lock
        through every WRITE round trip, exclusively unless this flag is set and the
        write ends within the file's size (fs/fuse/file.c, fuse_dio_lock; Linux >= 6.2).
        Held exclusively, one writer asleep in the driver keeps every other writer
        waiting for the lock in uninterruptible sleep.  Streams report a size no write
        reaches (fuse.STREAM_SIZE), so their writers share the lock and each reaches
        the driver, where a signal interrupts it.  CUSE takes no lock at all.
        Seekable devices report size 0 (lseek SEEK_END must stay where it is), so
        their writes "extend" the file and stay serialised."""
        if cdev.seekable:
            return abi.FOPEN_DIRECT_IO | abi.FOPEN_NOFLUSH
        return (abi.FOPEN_DIRECT_IO | abi.FOPEN_NOFLUSH | abi.FOPEN_NONSEEKABLE | abi.FOPEN_STREAM
                | abi.FOPEN_PARALLEL_DIRECT_WRITES)

    # -- handlers -----------------------------------------------------------------------

    def _serve(self, req: Request, operation: Callable[..., Any], *args: Any) -> Any:
        """Run a file operation that may sleep, reachable by FUSE_INTERRUPT meanwhile."""
        td = self._thread(req.unique)
        try:
            return operation(*args, td=td)
        finally:
            self._inflight.pop(req.unique, None)

    # READ and WRITE, the requests that carry data, come decoded by fuse/request's
    # fused decoders (a plain tuple, no Request) and answer with the reply built in place.

    # The compiled loop (pykld._loop) calls read_chunks and write_count itself, with
    # the request's fields as plain ints (compiled_entries); the Python loop comes
    # through do_read and do_write.

    def do_read(self, io: ReadIo) -> Reply:
        return reply.data(io[0], self.read_chunks(*io))

    def do_write(self, io: WriteIo) -> Reply:
        return reply.write(io[0], self.write_count(*io))

    def read_chunks(self, unique: int, fh: int, offset: int, size: int, flags: int) -> list[Buffer]:
        """READ: the driver's data, as the reply's payload buffers."""
        file, offset = self._io_file(fh, offset)
        td = self._thread(unique)
        try:
            uio = file.read(offset, size, flags, td)
        finally:
            self._inflight.pop(unique, None)
        self._moved(fh, file, uio.offset)
        return uio.chunks

    def write_count(self, unique: int, fh: int, offset: int, data: Buffer, flags: int) -> int:
        """WRITE: the bytes the driver took."""
        file, offset = self._io_file(fh, offset)
        td = self._thread(unique)
        try:
            count = file.write(offset, data, flags, td)
        finally:
            self._inflight.pop(unique, None)
        self._moved(fh, file, offset + count)
        return count

    def _io_file(self, fh: int, offset: int) -> tuple[OpenFile, int]:
        """The open file of a READ or WRITE and the offset its driver sees: 0 for a
        stream, the kept position where the transport keeps them, else the caller's."""
        file = self.files.get(fh)
        if file is None:
            raise OSError(errno.EBADF, f"no open file {fh}", None)
        if not file.cdev.seekable:
            offset = 0
        elif self.positions is not None:
            offset = self.positions.get(fh, 0)
        return file, offset

    def _moved(self, fh: int, file: OpenFile, offset: int) -> None:
        """Where an I/O left the open, for transports that keep positions."""
        if self.positions is not None and file.cdev.seekable:
            self.positions[fh] = offset

    def do_ioctl(self, req: Request) -> Reply:
        """Restricted ioctl: the kernel copied the argument by its encoded size."""
        args = req.args
        if args.flags & abi.FUSE_IOCTL_COMPAT:
            raise OSError(errno.ENOSYS, "32-bit compat ioctls are not supported", None)
        file = self._file(args.fh)
        memory = ProcessMemory(req.pid) if self.process_memory and req.pid > 0 else None
        result, out = self._serve(req, file.ioctl, args.cmd, args.arg, args.data, memory)
        return reply.ioctl(req.unique, result, out[: args.out_size] if out is not None else b"")

    def do_poll(self, req: Request) -> Reply:
        args = req.args
        file = self._file(args.fh)
        poller = FusePoller(self.session, args.kh) if args.flags & abi.FUSE_POLL_SCHEDULE_NOTIFY else None
        return reply.poll(req.unique, file.poll(args.events, poller))

    def do_flush(self, req: Request) -> Reply:
        # The driver's close runs at RELEASE.  ENOSYS tells the kernel not to send
        # FLUSH again, which saves every close(2) a round trip.
        raise OSError(errno.ENOSYS, "flush is not needed", None)

    def do_release(self, req: Request) -> Reply:
        self.release_fh(req.unique, req.args.fh)
        return reply.empty(req.unique)

    def release_fh(self, unique: int, fh: int) -> None:
        self.drop_open_state(fh)
        file = self.files.pop(fh, None)
        if file is not None:
            try:
                file.close()
            except OSError as exc:  # release has no caller left to tell
                self.log(f"close of {file.cdev.path} failed: {exc}")

    def drop_open_state(self, fh: int) -> None:
        """The open `fh` is gone: drop what is kept for it."""
        if self.positions is not None:
            self.positions.pop(fh, None)

    def do_interrupt(self, req: Request) -> Reply:
        self.interrupt(req.args.unique)
        return None

    def interrupt(self, target: int) -> None:
        """FUSE_INTERRUPT of request `target`."""
        td = self._inflight.get(target)
        if td is not None:
            td.interrupt(errno.EINTR)
        else:
            # The interrupt overtook its request (another worker has not started
            # it yet): remember it for a while.
            with self._early_lock:
                self._early[target] = None
                while len(self._early) > _EARLY_INTERRUPTS:
                    self._early.popitem(last=False)

    def do_fsync(self, req: Request) -> Reply:
        return reply.empty(req.unique)

    def close_all(self) -> None:
        """The connection is gone: close what its callers left open."""
        for fh in list(self.files):
            file = self.files.pop(fh)
            try:
                file.close()
            except OSError:
                pass

    def compiled_entries(self) -> dict[int, Any]:
        """What the compiled loop serves without a Request (src/pykld/_ext/dispatch.c):
        opcode -> entry point taking plain ints, None (FORGET: nothing to do) or an
        errno (FLUSH's answer).  A subclass that overrides a do_ method keeps that
        opcode in Python: its override is what serves it then."""
        op = abi.Opcode
        mine = type(self)
        entries: dict[int, Any] = {}
        if mine.do_read is FileOps.do_read:
            entries[op.READ] = self.read_chunks
        if mine.do_write is FileOps.do_write:
            entries[op.WRITE] = self.write_count
        if mine.do_release is FileOps.do_release:
            entries[op.RELEASE] = self.release_fh
        if mine.do_interrupt is FileOps.do_interrupt:
            entries[op.INTERRUPT] = self.interrupt
        if mine.do_flush is FileOps.do_flush:
            entries[op.FLUSH] = errno.ENOSYS
        return entries

    def handlers(self) -> dict[int, Any]:
        op = abi.Opcode
        return {
            op.READ: self.do_read, op.WRITE: self.do_write, op.IOCTL: self.do_ioctl,
            op.POLL: self.do_poll, op.FLUSH: self.do_flush, op.RELEASE: self.do_release,
            op.INTERRUPT: self.do_interrupt, op.FSYNC: self.do_fsync,
        }
