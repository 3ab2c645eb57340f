"""The request loop itself, on both loops (request_loop): a Session's worker threads read
requests from a channel, serve them and reply, as on /dev/fuse.  The channel is a
SOCK_SEQPACKET socket pair, which, like /dev/fuse, gives one message per read."""

from __future__ import annotations

import errno
import os
import socket
import struct
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.fuse import abi
from pykld.kernel.sched import wakeup
from pykld.transport.fuse import DevfsHandler
from pykld.transport.session import Session

DRIVER = textwrap.dedent('''
    from pykld import CharacterDevice, Module, make_dev, sleep

    class Box(CharacterDevice):
        seekable = True

        def __init__(self):
            self.data = b"0123456789"
            self.raise_next = None
            self.closes = 0

        def read(self, file, uio):
            if self.raise_next is not None:
                exc, self.raise_next = self.raise_next, None
                raise exc
            if uio.offset == 999:  # a read here sleeps until woken or interrupted
                sleep(self, timeout=10)
            uio.uiomove(self.data[uio.offset:])

        def write(self, file, uio):
            self.data = bytes(uio.move_in())

        def close(self, file):
            self.closes += 1

    class Drv(Module):
        name = "drv"

        def load(self):
            self.dev = Box()
            make_dev(self.dev, "box", mode=0o666)
''')

_HEADER = struct.Struct("<IIQQIIIHH")
_IO_ARGS = struct.Struct("<QQIIQI4x")
_OUT_HEADER = struct.Struct("<IiQ")


def message(opcode: int, unique: int, body: bytes, nodeid: int = 1) -> bytes:
    return _HEADER.pack(abi.IN_HEADER_SIZE + len(body), opcode, unique, nodeid, 0, 0, 1, 0, 0) + body


def io(opcode: int, unique: int, fh: int, offset: int, size: int, data: bytes = b"") -> bytes:
    return message(opcode, unique, _IO_ARGS.pack(fh, offset, size, 0, 0, os.O_RDWR) + data)


class Channel:
    """A DevfsHandler's Session on one end of a socket pair; the test is the kernel."""

    def __init__(self, kernel: Kernel, handler: DevfsHandler, max_workers: int = 8) -> None:
        self.kernel = kernel
        self.handler = handler
        self.mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.mine.settimeout(5)
        self.logged: list[str] = []
        self.session = Session(theirs.detach(), handler.handlers(), 1 << 16, log=self.logged.append,
                               max_workers=max_workers, entries=handler.compiled_entries())
        handler.attach(self.session)
        self.session.start()
        cdev = kernel.devfs.lookup("box")
        assert cdev is not None
        self.cdev = cdev
        self.dev = kernel.module("drv").instance.dev  # type: ignore[attr-defined]

    def send(self, raw: bytes) -> None:
        self.mine.send(raw)

    def reply(self) -> tuple[int, int, bytes]:
        """(errno, unique, payload) of the next reply."""
        raw = self.mine.recv(1 << 17)
        length, error, unique = _OUT_HEADER.unpack_from(raw)
        assert length == len(raw)
        return -error, unique, raw[_OUT_HEADER.size :]

    def open(self, unique: int = 1) -> int:
        self.send(message(abi.Opcode.OPEN, unique, struct.pack("<II", os.O_RDWR, 0), nodeid=self.cdev.ino))
        error, got, payload = self.reply()
        assert (error, got) == (0, unique)
        fh, open_flags, _ = struct.unpack("<QII", payload)
        assert open_flags == abi.FOPEN_DIRECT_IO | abi.FOPEN_NOFLUSH  # a seekable device's
        return int(fh)

    def close(self) -> None:
        self.session.stop()  # parked followers leave
        self.mine.close()  # the channel ends: the reader leaves
        assert self.session.finished.wait(5)
        os.close(self.session.fd)


@pytest.fixture
def channel(tmp_path: Path, request_loop: str) -> Iterator[Channel]:
    path = tmp_path / "box.py"
    path.write_text(DRIVER)
    kernel = Kernel()
    handler = DevfsHandler(kernel)
    kernel.devfs.subscribe(handler.track)
    kernel.kldload(str(path))
    served = Channel(kernel, handler)
    assert served.session.loop == request_loop
    try:
        yield served
    finally:
        served.close()
        kernel.shutdown()


def test_open_read_write_flush_forget_release(channel: Channel) -> None:
    fh = channel.open()
    channel.send(io(abi.Opcode.READ, 2, fh, 2, 4))
    assert channel.reply() == (0, 2, b"2345")
    channel.send(io(abi.Opcode.WRITE, 3, fh, 0, 3, b"abc"))
    assert channel.reply() == (0, 3, struct.pack("<II", 3, 0))
    channel.send(message(abi.Opcode.FLUSH, 4, struct.pack("<QQQ", fh, 0, 0)))
    assert channel.reply() == (errno.ENOSYS, 4, b"")
    # FORGET and BATCH_FORGET get no reply: the next reply is the READ's.
    channel.send(message(abi.Opcode.FORGET, 5, struct.pack("<Q", 1)))
    channel.send(message(abi.Opcode.BATCH_FORGET, 6, struct.pack("<II", 1, 0) + struct.pack("<QQ", 2, 1)))
    channel.send(io(abi.Opcode.READ, 7, fh, 0, 64))
    assert channel.reply() == (0, 7, b"abc")
    assert channel.cdev.stats.reads == 2 and channel.cdev.stats.bytes_written == 3
    channel.send(message(abi.Opcode.RELEASE, 8, struct.pack("<QIIQ", fh, os.O_RDWR, 0, 0)))
    assert channel.reply() == (0, 8, b"")
    assert channel.dev.closes == 1
    channel.send(io(abi.Opcode.READ, 9, fh, 0, 64))
    assert channel.reply() == (errno.EBADF, 9, b"")


def test_an_open_of_a_directory_or_a_gone_node_is_refused(channel: Channel) -> None:
    channel.send(message(abi.Opcode.OPEN, 1, struct.pack("<II", os.O_RDONLY, 0), nodeid=abi.FUSE_ROOT_ID))
    assert channel.reply() == (errno.EISDIR, 1, b"")
    channel.send(message(abi.Opcode.OPEN, 2, struct.pack("<II", os.O_RDONLY, 0), nodeid=12345))
    assert channel.reply() == (errno.ENXIO, 2, b"")


def test_driver_errors_become_errnos_and_a_bug_is_eio_and_logged(channel: Channel) -> None:
    fh = channel.open()
    for unique, exc, expected in [(11, OSError(errno.ETIMEDOUT, "late"), errno.ETIMEDOUT),
                                  (12, OSError(600, "no such errno"), errno.EIO),
                                  (13, ValueError("a driver bug"), errno.EIO)]:
        channel.dev.raise_next = exc
        channel.send(io(abi.Opcode.READ, unique, fh, 0, 4))
        assert channel.reply() == (expected, unique, b"")
    assert any("ValueError('a driver bug')" in line for line in channel.kernel.dmesg())  # the fault, in dmesg
    channel.send(io(abi.Opcode.READ, 14, fh, 0, 4))
    assert channel.reply() == (0, 14, b"0123")  # and it goes on serving


def test_malformed_requests_get_the_decoders_errnos(channel: Channel) -> None:
    fh = channel.open()
    channel.send(io(abi.Opcode.READ, 21, fh, 0, 4)[:30])  # shorter than a header: dropped, logged
    channel.send(message(abi.Opcode.READ, 22, b"\0" * 8))  # a body too short for its arguments
    assert channel.reply() == (errno.EINVAL, 22, b"")
    channel.send(io(abi.Opcode.WRITE, 23, fh, 0, 100, b"abc"))  # announces more than it carries
    assert channel.reply() == (errno.EIO, 23, b"")
    channel.send(message(abi.Opcode.FLUSH, 24, b"\0" * 8))
    assert channel.reply() == (errno.EINVAL, 24, b"")
    channel.send(message(abi.Opcode.RELEASE, 25, b"\0" * 8))
    assert channel.reply() == (errno.EINVAL, 25, b"")
    assert any("short message" in line for line in channel.logged), channel.logged
    assert sum("malformed" in line for line in channel.logged) == 5


def test_a_blocked_read_hands_the_reader_role_on(channel: Channel) -> None:
    fh = channel.open()
    channel.send(io(abi.Opcode.READ, 31, fh, 999, 4))  # sleeps in the driver
    channel.send(io(abi.Opcode.READ, 32, fh, 0, 4))
    assert channel.reply() == (0, 32, b"0123")  # served by the thread that took over
    wakeup(channel.dev)
    assert channel.reply() == (0, 31, b"")


def test_an_interrupt_reaches_the_sleeping_read(channel: Channel) -> None:
    fh = channel.open()
    channel.send(io(abi.Opcode.READ, 41, fh, 999, 4))
    channel.send(message(abi.Opcode.INTERRUPT, 42, struct.pack("<Q", 41)))
    assert channel.reply() == (errno.EINTR, 41, b"")  # and none for the INTERRUPT itself


def test_at_max_workers_a_read_that_would_block_is_eagain(tmp_path: Path, request_loop: str) -> None:
    path = tmp_path / "box.py"
    path.write_text(DRIVER)
    kernel = Kernel()
    handler = DevfsHandler(kernel)
    kernel.devfs.subscribe(handler.track)
    kernel.kldload(str(path))
    channel = Channel(kernel, handler, max_workers=1)
    try:
        fh = channel.open()
        channel.send(io(abi.Opcode.READ, 51, fh, 999, 4))
        assert channel.reply() == (errno.EAGAIN, 51, b"")  # no thread left to read meanwhile
    finally:
        channel.close()
        kernel.shutdown()


def test_kept_positions_move_with_each_read(channel: Channel) -> None:
    """CUSE passes no offsets: FileOps.positions keeps each open's, on both loops."""
    channel.handler.positions = {}
    fh = channel.open()
    channel.send(io(abi.Opcode.READ, 61, fh, 0, 4))
    assert channel.reply() == (0, 61, b"0123")
    channel.send(io(abi.Opcode.READ, 62, fh, 0, 4))
    assert channel.reply() == (0, 62, b"4567")


def test_a_bug_in_pykld_itself_is_eio_and_one_line_in_dmesg(channel: Channel) -> None:
    fh = channel.open()

    def broken(*args: object) -> list[bytes]:
        raise RuntimeError("boom")

    channel.handler.read_chunks = broken  # type: ignore[method-assign]
    channel.session.set_entries(channel.handler.compiled_entries())
    channel.send(io(abi.Opcode.READ, 71, fh, 0, 4))
    assert channel.reply() == (errno.EIO, 71, b"")
    assert channel.logged[-1] == "fuse: internal error on opcode 15: RuntimeError('boom')"


def test_a_transport_that_overrides_a_handler_keeps_its_override(tmp_path: Path, request_loop: str) -> None:
    """CUSE's do_release wakes a drain: the compiled loop must not bypass it."""
    released: list[int] = []

    class Tracking(DevfsHandler):
        def do_release(self, req):  # type: ignore[no-untyped-def]
            released.append(req.unique)
            return super().do_release(req)

    path = tmp_path / "box.py"
    path.write_text(DRIVER)
    kernel = Kernel()
    handler = Tracking(kernel)
    kernel.devfs.subscribe(handler.track)
    kernel.kldload(str(path))
    channel = Channel(kernel, handler)
    try:
        fh = channel.open()
        channel.send(message(abi.Opcode.RELEASE, 81, struct.pack("<QIIQ", fh, os.O_RDWR, 0, 0)))
        assert channel.reply() == (0, 81, b"")
        assert released == [81] and channel.dev.closes == 1
    finally:
        channel.close()
        kernel.shutdown()
