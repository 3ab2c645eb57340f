"""A FUSE/CUSE session: the channel file descriptor and the threads that serve it.

Leader/follower: one thread, the reader, reads a request and serves it itself,
then reads the next, so a stream of quick requests costs no thread hand-off.
When the request it serves is about to block (the driver sleeps, or waits for
the device lock) the reader hands its role on first: it promotes a parked
follower or starts a new thread.  So a blocked caller never stalls another
caller.  A monitor promotes a follower too when a request makes no progress
without saying it blocks (a driver calling time.sleep).  A reply is one
writev of header and payload buffers.

Each request goes one way, as in fuser: its opcode picks an entry of one table,
the entry's decoder (fuse/request's, chosen by decoder_for: the fused one for
READ and WRITE, parse for the rest) decodes it, the entry's handler answers.

Two loops run this (transport/loop.py, PYKLD_LOOP): the Python one below
(_work, answer), and the compiled one of pykld._loop, which reads, decodes
and answers READ, WRITE, OPEN, RELEASE, INTERRUPT, FORGET and FLUSH in C
through the transport's entry points (FileOps.compiled_entries) and hands
every other request to answer().  Both keep the reader role the same way.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

from pykld.fuse import request as fuse_request
from pykld.fuse.abi import OUR_MINOR
from pykld.fuse.reply import error as error_reply
from pykld.kernel.uio import Buffer
from pykld.transport import loop

Reply: TypeAlias = bytes | Sequence[Buffer] | None
#: Takes what its opcode's decoder returns: a Request, or ReadIo/WriteIo for READ/WRITE.
Handler: TypeAlias = Callable[[Any], Reply]
Decoder: TypeAlias = Callable[[memoryview, int, int], Any]

_GONE = (errno.ENODEV, errno.EBADF, errno.ECONNABORTED)  # the connection is over
MONITOR_TICK = 0.05  # seconds a request may hold the reader role without progress


class Session:
    def __init__(self, fd: int, handlers: Mapping[int, Handler], bufsize: int, name: str = "fuse",
                 max_workers: int = 256, max_idle: int = 8, log: Callable[[str], None] | None = None,
                 entries: Mapping[int, Any] | None = None) -> None:
        self.fd = fd
        # opcode -> (decoder, handler); an opcode nobody handles is parsed and refused.
        self.table: dict[int, tuple[Decoder, Handler]] = {
            int(opcode): (fuse_request.decoder_for(opcode), handler) for opcode, handler in handlers.items()}
        self._unhandled: tuple[Decoder, Handler] = (fuse_request.parse, _refuse)
        self.bufsize = bufsize
        self.name = name
        self.minor = OUR_MINOR  # until INIT negotiates the connection's
        self.max_workers = max_workers
        self.max_idle = max_idle
        self.log = log or (lambda text: None)
        # The compiled loop (src/pykld/_ext/loop.c) does _took and the quick cases of
        # _take_reader_role itself, on these same attributes under this same lock.
        self._lock = threading.Lock()
        self._followers_wake = threading.Condition(self._lock)
        self._workers = 0
        self._readers = 0  # threads in, or on their way to, read(2)
        self._parked = 0  # followers waiting to become the reader
        self._promotions = 0  # promotions handed to parked followers, not taken yet
        self._progress = 0  # requests taken so far, for the monitor
        self._stopping = False
        self.finished = threading.Event()  # set when the connection ended and every worker left
        # The request loop (PYKLD_LOOP): the compiled one serves `entries` (opcode ->
        # FileOps entry point) in C and the rest through answer().
        compiled, self.loop_why = loop.choose()
        self.loop = loop.COMPILED if compiled is not None else loop.PYTHON
        self._compiled = compiled
        self._dispatcher = compiled.Dispatcher(self, dict(entries or {})) if compiled is not None else None

    def set_entries(self, entries: Mapping[int, Any]) -> None:
        """New entry points for the compiled loop (a test wrapping a FileOps method)."""
        if self._dispatcher is not None:  # in place: running workers hold this one
            self._dispatcher.__init__(self, dict(entries))

    @property
    def workers(self) -> int:
        return self._workers

    def start(self) -> None:
        loop.announce(self.loop_why, self.log)
        with self._lock:
            self._spawn_reader()
        threading.Thread(target=self._monitor, name=f"pykld-{self.name}-monitor", daemon=True).start()

    def stop(self) -> None:
        """Stop taking requests (the caller unmounts or closes the channel to wake readers)."""
        with self._lock:
            self._stopping = True
            self._followers_wake.notify_all()

    # -- the reader role -----------------------------------------------------------------

    def _spawn_reader(self) -> None:
        """With the lock held: one more thread, as the reader."""
        if self._workers >= self.max_workers or self._stopping:
            return
        self._workers += 1
        self._readers += 1
        work = self._work if self._dispatcher is None else self._work_compiled
        threading.Thread(target=work, name=f"pykld-{self.name}", daemon=True).start()

    def ensure_reader(self) -> None:
        """The request being served may block: make sure another thread reads meanwhile.

        At max_workers threads none is left to read: the request fails with EAGAIN
        instead of blocking, since a request that waited then would stall every
        other caller until one of the blocked ones ended (a hang, when they wait
        for a writer whose request cannot be read)."""
        with self._lock:
            if self._readers or self._stopping:
                return
            if self._parked > self._promotions:
                self._promotions += 1
                self._readers += 1
                self._followers_wake.notify()
            elif self._workers < self.max_workers:
                self._spawn_reader()
            else:
                raise OSError(errno.EAGAIN, f"{self._workers} requests are blocked already (max_workers)", None)

    def _monitor(self) -> None:
        seen = -1
        while not self._stopping:
            threading.Event().wait(MONITOR_TICK)
            with self._lock:
                stalled = self._readers == 0 and self._progress == seen
                seen = self._progress
            if stalled:
                try:
                    self.ensure_reader()
                except OSError:
                    pass  # at max_workers: the next request that would block is told EAGAIN

    def _work(self) -> None:
        buf = bytearray(self.bufsize)
        view = memoryview(buf)
        fd = self.fd
        readv = os.readv
        into = [buf]
        try:
            while True:
                try:
                    nbytes = readv(fd, into)
                except OSError as exc:
                    if exc.errno in _GONE:
                        self._stopping = True
                        return
                    continue  # ENOENT: the request was interrupted before we read it; EINTR
                if nbytes == 0:
                    self._stopping = True
                    return
                self._took()
                self.serve(view, nbytes)
                if not self._take_reader_role():
                    return
        finally:
            self._left()

    def _work_compiled(self) -> None:
        """_work in C: read, serve, reply, then _take_reader_role, until it says leave."""
        try:
            assert self._compiled is not None
            self._compiled.work(self, self._dispatcher, self.fd, self.bufsize)
        finally:
            self._left()

    def _took(self) -> None:
        """A request was read: this thread serves it, no longer reads."""
        with self._lock:
            self._readers -= 1
            self._progress += 1

    def _left(self) -> None:
        with self._lock:
            self._workers -= 1
            last = self._workers == 0
        if last and self._stopping:
            self.finished.set()

    def _take_reader_role(self) -> bool:
        """After serving: read again if nobody else does, else park as a follower.
        False when this thread should exit."""
        with self._lock:
            while not self._stopping:
                if self._readers == 0:
                    self._readers += 1
                    return True
                if self._promotions:
                    self._promotions -= 1  # promoted while serving: the role is ours already
                    return True
                if self._parked >= self.max_idle:
                    return False
                self._parked += 1
                self._followers_wake.wait()
                self._parked -= 1
            return False

    # -- one request -----------------------------------------------------------------------

    def serve(self, view: memoryview, nbytes: int) -> None:
        """Serve one request and send its reply, through this session's loop."""
        if self._dispatcher is not None:
            self._dispatcher.serve(view, nbytes, self.fd)
            return
        reply = self.answer(view, nbytes)
        if reply is not None:
            self.send(reply)

    def answer(self, view: memoryview, nbytes: int) -> Reply:
        """Decode one request and run its handler: the reply to send, or None."""
        reply: Reply
        try:
            # Every decoder checks the length first, so a short message's opcode
            # (whatever the buffer held) picks a decoder that refuses it.
            entry = self.table.get(view[4] | view[5] << 8)
            decode, handle = entry if entry is not None else self._unhandled
            reply = handle(decode(view, nbytes, self.minor))
        except fuse_request.ProtocolError as exc:
            self.log(f"{self.name}: malformed request dropped: {exc}")
            reply = error_reply(exc.unique, exc.errno) if exc.unique is not None else None
        except OSError as exc:
            reply = error_reply(_unique(view), _errno_of(exc))
        except Exception as exc:  # a bug in pykld itself: answer, log, keep serving
            self.log(f"{self.name}: internal error on opcode {view[4]}: {exc!r}")
            reply = error_reply(_unique(view), errno.EIO)
        return reply

    def send(self, reply: bytes | Sequence[Buffer]) -> None:
        try:
            if isinstance(reply, bytes):
                os.write(self.fd, reply)
            else:
                os.writev(self.fd, reply)
        except OSError as exc:
            # ENOENT: the caller was interrupted and the kernel forgot the request.
            if exc.errno not in (errno.ENOENT, *_GONE):
                self.log(f"{self.name}: reply failed: {exc}")


def _refuse(req: fuse_request.Request) -> Reply:
    return error_reply(req.unique, errno.ENOSYS)


def _unique(view: memoryview) -> int:
    return int.from_bytes(view[8:16], "little")


def _errno_of(exc: OSError) -> int:
    code: Any = exc.errno
    return code if isinstance(code, int) and 0 < code < 512 else errno.EIO
