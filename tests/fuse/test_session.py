"""One request loop for every opcode: Session decodes each request with the decoder its
opcode's table entry names (fuse/request's fused one for READ and WRITE) and answers with
the entry's handler.  Replies are read back from a pipe standing in for /dev/fuse.  Each
test runs on both loops (request_loop): the compiled one decodes READ and WRITE in C and
must answer malformed ones exactly as the Python decoders do."""

from __future__ import annotations

import errno
import os
import struct
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.fuse import abi
from pykld.transport.fileops import FileOps
from pykld.transport.session import Session

DRIVER = textwrap.dedent('''
    from pykld import CharacterDevice, Module, make_dev

    class Echo(CharacterDevice):
        seekable = True

        def __init__(self):
            self.data = b"hello"

        def read(self, file, uio):
            uio.uiomove(self.data[uio.offset:])

        def write(self, file, uio):
            self.data = bytes(uio.move_in())

    class Drv(Module):
        name = "drv"

        def load(self):
            self.dev = Echo()
            make_dev(self.dev, "echo", mode=0o666)
''')

_HEADER = struct.Struct("<IIQQIIIHH")
_IO_ARGS = struct.Struct("<QQIIQI4x")
_OUT_HEADER = struct.Struct("<IiQ")


class Loop:
    """A Session serving FileOps over a pipe: feed() one message, replies() what it sent."""

    def __init__(self, kernel: Kernel) -> None:
        self.ops = FileOps(kernel)
        self.ops.files[1] = kernel.open_cdev("/dev/echo", os.O_RDWR)
        self.rfd, wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        self.logged: list[str] = []
        self.session = Session(wfd, self.ops.handlers(), 1 << 16, log=self.logged.append,
                               entries=self.ops.compiled_entries())
        self.ops.attach(self.session)
        self.buf = bytearray(1 << 16)

    def feed(self, message: bytes) -> None:
        self.buf[: len(message)] = message
        self.session.serve(memoryview(self.buf), len(message))

    def reply(self) -> tuple[int, int, bytes] | None:
        """(error, unique, payload) of the reply sent, None if none was."""
        try:
            raw = os.read(self.rfd, 1 << 16)
        except BlockingIOError:
            return None
        length, error, unique = _OUT_HEADER.unpack_from(raw)
        assert length == len(raw)
        return -error, unique, raw[_OUT_HEADER.size :]

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.session.fd)


@pytest.fixture
def loop(tmp_path: Path, request_loop: str) -> Iterator[Loop]:
    path = tmp_path / "echo.py"
    path.write_text(DRIVER)
    kernel = Kernel()
    kernel.kldload(str(path))
    served = Loop(kernel)
    assert served.session.loop == request_loop
    try:
        yield served
    finally:
        served.close()
        kernel.shutdown()


def message(opcode: int, unique: int, body: bytes, length: int | None = None) -> bytes:
    size = abi.IN_HEADER_SIZE + len(body)
    return _HEADER.pack(size if length is None else length, opcode, unique, 2, 0, 0, 1, 0, 0) + body


def io(opcode: int, unique: int, fh: int, size: int, data: bytes = b"", length: int | None = None) -> bytes:
    return message(opcode, unique, _IO_ARGS.pack(fh, 0, size, 0, 0, os.O_RDWR) + data, length)


def test_read_and_write_are_served_from_the_table(loop: Loop) -> None:
    loop.feed(io(abi.Opcode.READ, 11, 1, 64))
    assert loop.reply() == (0, 11, b"hello")
    loop.feed(io(abi.Opcode.WRITE, 12, 1, 3, b"abc"))
    assert loop.reply() == (0, 12, struct.pack("<II", 3, 0))
    loop.feed(io(abi.Opcode.READ, 13, 1, 64))
    assert loop.reply() == (0, 13, b"abc")


def test_a_length_that_does_not_match_what_was_read_is_eio(loop: Loop) -> None:
    loop.feed(io(abi.Opcode.READ, 21, 1, 64, length=200))
    assert loop.reply() == (errno.EIO, 21, b"")
    loop.feed(io(abi.Opcode.WRITE, 22, 1, 3, b"abc", length=300))
    assert loop.reply() == (errno.EIO, 22, b"")
    assert len(loop.logged) == 2 and "malformed" in loop.logged[0]


def test_a_write_announcing_more_data_than_it_carries_is_eio(loop: Loop) -> None:
    loop.feed(io(abi.Opcode.WRITE, 23, 1, 100, b"abc"))
    assert loop.reply() == (errno.EIO, 23, b"")
    loop.feed(io(abi.Opcode.READ, 24, 1, 64))
    assert loop.reply() == (0, 24, b"hello")  # the driver never saw it


def test_an_unknown_file_handle_is_ebadf(loop: Loop) -> None:
    loop.feed(io(abi.Opcode.READ, 31, 9, 64))
    assert loop.reply() == (errno.EBADF, 31, b"")
    loop.feed(io(abi.Opcode.WRITE, 32, 9, 3, b"abc"))
    assert loop.reply() == (errno.EBADF, 32, b"")


def test_an_opcode_without_handler_is_enosys(loop: Loop) -> None:
    loop.feed(message(abi.Opcode.GETXATTR, 41, struct.pack("<II", 8, 0) + b"user.x\0"))
    assert loop.reply() == (errno.ENOSYS, 41, b"")


def test_a_message_shorter_than_a_header_is_dropped_and_logged(loop: Loop) -> None:
    loop.feed(io(abi.Opcode.READ, 51, 1, 64)[:20])
    assert loop.reply() is None
    assert loop.logged and "short message" in loop.logged[0]


def test_a_read_shorter_than_its_arguments_is_refused_by_the_general_decoder(loop: Loop) -> None:
    loop.feed(message(abi.Opcode.READ, 61, b"\0" * 8))
    assert loop.reply() == (errno.EINVAL, 61, b"")


def test_the_opcode_is_both_bytes_of_its_field(loop: Loop) -> None:
    # 256 + READ is no READ (CUSE_INIT, 4096, is the opcode that needs the high byte).
    loop.feed(io(abi.Opcode.READ | 0x100, 71, 1, 64))
    assert loop.reply() == (errno.ENOSYS, 71, b"")


def test_a_handler_errno_reaches_the_caller_as_it_is_unless_it_is_no_errno(request_loop: str) -> None:
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    raised: list[OSError] = []

    def fails(req: object) -> None:
        raise raised[-1]

    session = Session(wfd, {abi.Opcode.FSYNC: fails}, 1 << 16)
    buf = bytearray(1 << 16)
    try:
        for unique, exc, expected in [(81, OSError(errno.ETIMEDOUT, "late"), errno.ETIMEDOUT),
                                      (82, OSError(errno.EOWNERDEAD, "gone"), errno.EOWNERDEAD),
                                      (83, OSError(600, "no such errno"), errno.EIO),
                                      (84, OSError("no errno at all"), errno.EIO)]:
            raised.append(exc)
            sent = message(abi.Opcode.FSYNC, unique, struct.pack("<QII", 1, 0, 0))
            buf[: len(sent)] = sent
            session.serve(memoryview(buf), len(sent))
            _, error, got = _OUT_HEADER.unpack_from(os.read(rfd, 1 << 16))
            assert (-error, got) == (expected, unique)
    finally:
        os.close(rfd)
        os.close(wfd)


def test_a_channel_that_is_gone_ends_the_session(request_loop: str) -> None:
    # readv on a descriptor not open for reading fails with EBADF, as on a closed
    # channel: the reader stops, and the session says it has finished.
    rfd, wfd = os.pipe()
    session = Session(wfd, {}, 1 << 16)
    try:
        session.start()
        assert session.finished.wait(5)
        assert session.workers == 0
    finally:
        session.stop()
        os.close(rfd)
        os.close(wfd)
