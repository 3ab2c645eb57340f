"""fifo: a bounded byte pipe.

Readers sleep while it is empty, writers while it is full; O_NONBLOCK callers
get EAGAIN instead; poll reports POLLIN when there are bytes and POLLOUT when
there is room.  Each byte written is read exactly once, by one reader.
"""

import errno
import os

from pykld import (
    POLLIN,
    POLLOUT,
    POLLRDNORM,
    POLLWRNORM,
    CharacterDevice,
    Module,
    OpenFile,
    SelInfo,
    Uio,
    make_dev,
    selrecord,
    selwakeup,
    sleep,
    wakeup,
)

CAPACITY = int(os.environ.get("PYKLD_FIFO_CAPACITY", "4096"))


class Fifo(CharacterDevice):
    seekable = False  # a stream: offsets mean nothing

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.buffer = bytearray()
        self.readable = SelInfo()
        self.writable = SelInfo()

    def read(self, file: OpenFile, uio: Uio) -> None:
        if not uio.resid:
            return  # a 0-byte read returns at once, as from a pipe, instead of sleeping
        while not self.buffer:
            sleep(self.readable)  # EAGAIN for O_NONBLOCK, EINTR on a signal
        count = min(len(self.buffer), uio.resid)
        uio.uiomove(bytes(self.buffer[:count]))
        del self.buffer[:count]
        wakeup(self.writable)
        selwakeup(self.writable)

    def write(self, file: OpenFile, uio: Uio) -> None:
        while uio.resid:
            room = self.capacity - len(self.buffer)
            if not room:
                try:
                    sleep(self.writable)
                except OSError as exc:
                    # Bytes already in the pipe stay there: report them, as write(2) does.
                    if exc.errno in (errno.EAGAIN, errno.EINTR) and uio.resid < uio.size:
                        return
                    raise
                continue
            self.buffer += uio.move_in(room)
            wakeup(self.readable)
            selwakeup(self.readable)

    def poll(self, file: OpenFile, events: int) -> int:
        ready = 0
        if self.buffer:
            ready |= events & (POLLIN | POLLRDNORM)
        if len(self.buffer) < self.capacity:
            ready |= events & (POLLOUT | POLLWRNORM)
        if not ready:
            if events & (POLLIN | POLLRDNORM):
                selrecord(self.readable)
            if events & (POLLOUT | POLLWRNORM):
                selrecord(self.writable)
        return ready


class FifoModule(Module):
    name = "fifo"

    def load(self) -> None:
        self.fifo = Fifo()
        self.cdev = make_dev(self.fifo, "fifo", mode=0o666)

    def unload(self) -> None:
        self.cdev.destroy()  # sleepers get ENXIO; pollers are woken and find it gone
