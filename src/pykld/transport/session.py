"""A FUSE/CUSE session: the channel file descriptor and the threads that serve it.

Workers read requests straight from the channel, as libfuse's multithreaded
loop does.  When the last idle worker takes a request, another is started, so
a driver that sleeps (a blocked reader) never stalls other callers; surplus
idle workers exit.  A reply is one writev of header and payload buffers.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Sequence
from typing import TypeAlias

from pykld.fuse import request as fuse_request
from pykld.fuse.abi import OUR_MINOR
from pykld.fuse.reply import error as error_reply
from pykld.kernel.uio import Buffer

Reply: TypeAlias = bytes | Sequence[Buffer] | None
Handler: TypeAlias = Callable[[fuse_request.Request], Reply]

_GONE = (errno.ENODEV, errno.EBADF, errno.ECONNABORTED)  # the connection is over


class Session:
    def __init__(self, fd: int, handler: Handler, bufsize: int, name: str = "fuse",
                 max_workers: int = 256, max_idle: int = 8, log: Callable[[str], None] | None = None) -> None:
        self.fd = fd
        self.handler = handler
        self.bufsize = bufsize
        self.name = name
        self.minor = OUR_MINOR  # until INIT negotiates the connection's
        self.max_workers = max_workers
        self.max_idle = max_idle
        self.log = log or (lambda text: None)
        self._lock = threading.Lock()
        self._workers = 0
        self._idle = 0
        self._stopping = False
        self.finished = threading.Event()  # set when the connection ended and every worker left

    def start(self) -> None:
        self._spawn()

    @property
    def workers(self) -> int:
        return self._workers

    def stop(self) -> None:
        """Stop taking requests (the caller unmounts or closes the channel to wake readers)."""
        self._stopping = True

    def _spawn(self) -> None:
        with self._lock:
            if self._workers >= self.max_workers or self._stopping:
                return
            self._workers += 1
            self._idle += 1
        threading.Thread(target=self._work, name=f"pykld-{self.name}", daemon=True).start()

    def _work(self) -> None:
        buf = bytearray(self.bufsize)
        view = memoryview(buf)
        idle = True
        try:
            while not self._stopping:
                try:
                    nbytes = os.readv(self.fd, [buf])
                except OSError as exc:
                    if exc.errno in _GONE:
                        self._stopping = True
                        break
                    continue  # ENOENT: the request was interrupted before we read it; EINTR
                if nbytes == 0:
                    self._stopping = True
                    break
                idle = False
                self._claim()
                self.serve(view, nbytes)
                if self._surplus():
                    return
                idle = True
        finally:
            with self._lock:
                self._workers -= 1
                if idle:
                    self._idle -= 1
                last = self._workers == 0
            if last and self._stopping:
                self.finished.set()

    def _claim(self) -> None:
        with self._lock:
            self._idle -= 1
            spawn = self._idle == 0
        if spawn:
            self._spawn()

    def _surplus(self) -> bool:
        """Back to idle, or True when enough workers idle already and this one should exit."""
        with self._lock:
            if self._idle >= self.max_idle:
                return True
            self._idle += 1
            return False

    def serve(self, view: memoryview, nbytes: int) -> None:
        """Decode one request, run its handler, send its reply."""
        try:
            req = fuse_request.parse(view, nbytes, minor=self.minor)
        except fuse_request.ProtocolError as exc:
            self.log(f"{self.name}: malformed request dropped: {exc}")
            if exc.unique is not None:
                self.send(error_reply(exc.unique, exc.errno))
            return
        try:
            reply = self.handler(req)
        except OSError as exc:
            reply = error_reply(req.unique, exc.errno if isinstance(exc.errno, int) and exc.errno > 0
                                else errno.EIO)
        except Exception as exc:  # a bug in pykld itself: answer, log, keep serving
            self.log(f"{self.name}: internal error on {req!r}: {exc!r}")
            reply = error_reply(req.unique, errno.EIO)
        if reply is not None:
            self.send(reply)

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
