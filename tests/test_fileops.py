"""The file operations FUSE and CUSE share, fed requests as the kernel sends them, no mount.

Requests are packed here from the layouts in <linux/fuse.h>; the session writes its
replies to a pipe, so what is checked is what the kernel would read.  This makes
orderings deterministic that a real mount produces only by chance.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.fuse import abi
from pykld.transport.fuse import MAX_WRITE, STREAM_SIZE, DevfsHandler
from pykld.transport.session import Session

Load = Callable[..., int]

IN_HDR = "<IIQQIIIHH"  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HDR = struct.Struct("<IiQ")  # len, error, unique
OPEN_OUT = struct.Struct("<QII")  # fh, open_flags, padding

SLEEPY = '''
from pykld import CharacterDevice, Module, make_dev, sleep

class Sleepy(CharacterDevice):
    """A read sleeps for a while (nobody wakes it), then says so."""
    def read(self, file, uio):
        sleep(self, timeout=1)
        uio.move_out(b"slept")

class SleepyModule(Module):
    name = "sleepy"
    def load(self):
        make_dev(Sleepy(), "sleepy", mode=0o666)
'''


class Wire:
    """A session whose replies land in a pipe: serve(request bytes) -> the reply's bytes."""

    def __init__(self, kernel: Kernel) -> None:
        self.handler = DevfsHandler(kernel)
        for cdev in kernel.devfs:
            self.handler.track("create", cdev)
        self._replies, self._out = os.pipe()
        self.session = Session(self._out, self.handler.handlers(), abi.read_buffer_size(MAX_WRITE, 256))
        self._buf = bytearray(abi.read_buffer_size(MAX_WRITE, 256))

    def send(self, opcode: int, unique: int, body: bytes = b"", nodeid: int = 0) -> None:
        message = struct.pack(IN_HDR, 40 + len(body), opcode, unique, nodeid, 0, 0, os.getpid(), 0, 0) + body
        self._buf[: len(message)] = message
        self.session.serve(memoryview(self._buf), len(message))

    def reply(self) -> tuple[int, int, bytes]:
        """(error, unique, payload) of the next reply."""
        data = os.read(self._replies, 1 << 16)
        length, error, unique = OUT_HDR.unpack_from(data)
        assert length == len(data)
        return error, unique, data[OUT_HDR.size:]

    def close(self) -> None:
        os.close(self._replies)
        os.close(self._out)


@pytest.fixture
def wire(kernel: Kernel, load_driver: Load) -> Iterator[Wire]:
    load_driver(SLEEPY, name="sleepy")
    wire = Wire(kernel)
    yield wire
    wire.close()


def open_sleepy(kernel: Kernel, wire: Wire) -> int:
    wire.send(abi.Opcode.OPEN, 1, struct.pack("<II", os.O_RDONLY, 0), nodeid=kernel.lookup("sleepy").ino)
    error, _, payload = wire.reply()
    assert error == 0
    fh: int = OPEN_OUT.unpack(payload)[0]
    return fh


def read_body(fh: int, size: int = 100) -> bytes:
    return struct.pack("<QQIIQII", fh, 0, size, 0, 0, os.O_RDONLY, 0)  # fuse_read_in


def test_interrupt_that_overtakes_its_request_ends_it_with_eintr(kernel: Kernel, wire: Wire) -> None:
    # The kernel sends INTERRUPT once the server has read a request; another server
    # thread may serve the INTERRUPT before the one holding the READ has started it.
    fh = open_sleepy(kernel, wire)
    wire.send(abi.Opcode.INTERRUPT, 2, struct.pack("<Q", 7))  # for request 7, not seen yet
    wire.send(abi.Opcode.READ, 7, read_body(fh))
    assert wire.reply()[:2] == (-errno.EINTR, 7)


def test_an_interrupt_is_for_its_own_request_only(kernel: Kernel, wire: Wire) -> None:
    fh = open_sleepy(kernel, wire)
    wire.send(abi.Opcode.INTERRUPT, 2, struct.pack("<Q", 7))
    wire.send(abi.Opcode.READ, 8, read_body(fh))
    assert wire.reply() == (0, 8, b"slept")


def test_a_32_bit_callers_ioctl_is_enosys_not_passed_to_the_driver(kernel: Kernel, wire: Wire) -> None:
    fh = open_sleepy(kernel, wire)
    ioctl_in = struct.Struct("<QIIQII")  # fh, flags, cmd, arg, in_size, out_size
    wire.send(abi.Opcode.IOCTL, 2, ioctl_in.pack(fh, abi.FUSE_IOCTL_COMPAT, 0x5401, 0, 0, 0))
    assert wire.reply() == (-errno.ENOSYS, 2, b"")
    wire.send(abi.Opcode.IOCTL, 3, ioctl_in.pack(fh, 0, 0x5401, 0, 0, 0))
    assert wire.reply()[:2] == (-errno.ENOTTY, 3)  # the driver's answer: it has no ioctl


IN_DIR = '''
from pykld import CharacterDevice, Module, make_dev

class Stream(CharacterDevice):
    seekable = False

class InDir(Module):
    name = "indir"
    def load(self):
        make_dev(Stream(), "pts/one", mode=0o644)
'''
ATTR_SIZE_AT, ATTR_MODE_AT = 16 + 8, 16 + 6 * 8 + 3 * 4  # in fuse_attr_out


def _dirent_names(payload: bytes) -> list[bytes]:
    names, at = [], 0
    while at < len(payload):
        _, _, namelen, _ = struct.unpack_from("<QQII", payload, at)
        names.append(payload[at + 24: at + 24 + namelen])
        at += (24 + namelen + 7) & ~7
    return names


def test_the_devfs_answers_names_attributes_and_refusals(kernel: Kernel, load_driver: Load) -> None:
    load_driver(SLEEPY, name="sleepy")
    load_driver(IN_DIR, name="indir")
    wire = Wire(kernel)
    try:
        root, sleepy, one = abi.FUSE_ROOT_ID, kernel.lookup("sleepy").ino, kernel.lookup("pts/one").ino
        wire.send(abi.Opcode.GETATTR, 1, struct.pack("<IIQ", 0, 0, 0), nodeid=root)
        error, _, attr = wire.reply()
        assert error == 0 and stat.S_ISDIR(struct.unpack_from("<I", attr, ATTR_MODE_AT)[0])
        wire.send(abi.Opcode.GETATTR, 2, struct.pack("<IIQ", 0, 0, 0), nodeid=sleepy)
        assert struct.unpack_from("<Q", wire.reply()[2], ATTR_SIZE_AT)[0] == 0  # seekable: lseek END stays
        wire.send(abi.Opcode.GETATTR, 3, struct.pack("<IIQ", 0, 0, 0), nodeid=one)
        assert struct.unpack_from("<Q", wire.reply()[2], ATTR_SIZE_AT)[0] == STREAM_SIZE  # a stream
        wire.send(abi.Opcode.LOOKUP, 4, b"pts\0", nodeid=root)
        error, _, entry = wire.reply()
        assert error == 0
        pts = struct.unpack_from("<Q", entry)[0]
        wire.send(abi.Opcode.LOOKUP, 5, b"nothing\0", nodeid=root)
        assert wire.reply()[0] == -errno.ENOENT
        setattr_in = struct.Struct("<IIQQQQQQIIIIIIII")  # valid, ..., mode, unused, uid, gid, unused
        wire.send(abi.Opcode.SETATTR, 6, setattr_in.pack(abi.FATTR_MODE, *[0] * 15), nodeid=sleepy)
        assert wire.reply()[0] == -errno.EPERM  # chmod: make_dev set the mode
        wire.send(abi.Opcode.SETATTR, 7, setattr_in.pack(abi.FATTR_SIZE, *[0] * 15), nodeid=sleepy)
        assert wire.reply()[0] == 0  # a shell's > truncates: accepted, ignored
        open_in = struct.pack("<II", os.O_RDONLY, 0)
        wire.send(abi.Opcode.OPEN, 8, open_in, nodeid=pts)
        assert wire.reply()[0] == -errno.EISDIR
        wire.send(abi.Opcode.OPEN, 9, open_in, nodeid=12345)
        assert wire.reply()[0] == -errno.ENXIO  # a device destroyed since its lookup
        wire.send(abi.Opcode.OPENDIR, 10, open_in, nodeid=sleepy)
        assert wire.reply()[0] == -errno.ENOTDIR
        wire.send(abi.Opcode.READDIR, 11, struct.pack("<QQIIQII", 0, 0, 4096, 0, 0, 0, 0), nodeid=root)
        assert _dirent_names(wire.reply()[2]) == [b".", b"..", b"pts", b"sleepy"]
        wire.send(abi.Opcode.READDIR, 12, struct.pack("<QQIIQII", 0, 3, 4096, 0, 0, 0, 0), nodeid=root)
        assert _dirent_names(wire.reply()[2]) == [b"sleepy"]  # a listing resumed at its offset
        wire.send(abi.Opcode.READDIR, 13, struct.pack("<QQIIQII", 0, 0, 4096, 0, 0, 0, 0), nodeid=pts)
        assert _dirent_names(wire.reply()[2]) == [b".", b"..", b"one"]
        wire.send(abi.Opcode.MKNOD, 14, struct.pack("<IIII", 0o20644, 0, 0, 0) + b"new\0", nodeid=root)
        assert wire.reply()[0] == -errno.EPERM
    finally:
        wire.close()


@pytest.mark.parametrize("minor", [37, 38])
def test_init_grants_only_what_the_kernel_offers_and_parallel_writes_from_7_38(kernel: Kernel, minor: int) -> None:
    wire = Wire(kernel)
    wire.handler.attach(wire.session)
    try:
        offered = abi.FUSE_ASYNC_READ | abi.FUSE_INIT_EXT
        wire.send(abi.Opcode.INIT, 1, struct.pack("<IIIII44x", 7, minor, 131072, offered, 0))
        error, _, init_out = wire.reply()
        assert error == 0
        assert struct.unpack_from("<I", init_out, 12)[0] & ~abi.FUSE_INIT_EXT == abi.FUSE_ASYNC_READ
        assert wire.handler.parallel_writes == (minor >= 38)
    finally:
        wire.close()


def test_an_interrupt_ends_the_request_it_names_while_it_sleeps(kernel: Kernel, wire: Wire) -> None:
    fh = open_sleepy(kernel, wire)
    body = read_body(fh)  # served from a buffer of its own: the INTERRUPT must not overwrite it
    read = bytearray(struct.pack(IN_HDR, 40 + len(body), abi.Opcode.READ, 7, 0, 0, 0, os.getpid(), 0, 0) + body)
    reading = threading.Thread(target=wire.session.serve, args=(memoryview(read), len(read)), daemon=True)
    reading.start()
    for _ in range(200):  # until the READ is in flight, asleep in the driver
        if 7 in wire.handler._inflight:
            break
        time.sleep(0.005)
    wire.send(abi.Opcode.INTERRUPT, 2, struct.pack("<Q", 7))
    assert wire.reply()[:2] == (-errno.EINTR, 7)  # not "slept", a second later
    reading.join(5)


def test_release_and_close_all_run_the_drivers_close(kernel: Kernel, load_driver: Load) -> None:
    # An open left behind keeps the module busy: kldunload says EBUSY.
    module = load_driver(SLEEPY, name="sleepy")
    wire = Wire(kernel)
    try:
        fh = open_sleepy(kernel, wire)
        wire.send(abi.Opcode.RELEASE, 2, struct.pack("<QIIQ", fh, 0, 0, 0))
        assert wire.reply() == (0, 2, b"")
        open_sleepy(kernel, wire)
        wire.handler.close_all()  # the connection is gone
        kernel.kldunload(module)
    finally:
        wire.close()


def test_a_poll_that_asks_for_notification_gets_one_when_the_device_wakes(kernel: Kernel) -> None:
    kernel.kldload(str(Path(__file__).resolve().parents[1] / "examples" / "fifo.py"))
    wire = Wire(kernel)
    wire.handler.attach(wire.session)
    try:
        fifo = kernel.lookup("fifo").ino
        opened = []
        for unique, mode in ((1, os.O_RDONLY), (2, os.O_WRONLY)):
            wire.send(abi.Opcode.OPEN, unique, struct.pack("<II", mode | os.O_NONBLOCK, 0), nodeid=fifo)
            error, _, payload = wire.reply()
            assert error == 0
            opened.append(OPEN_OUT.unpack(payload)[0])
        reader, writer = opened
        poll_in = struct.Struct("<QQII")  # fh, kh, flags, events
        wire.send(abi.Opcode.POLL, 3, poll_in.pack(reader, 77, abi.FUSE_POLL_SCHEDULE_NOTIFY, select.POLLIN))
        error, _, payload = wire.reply()
        assert error == 0 and struct.unpack_from("<I", payload)[0] & select.POLLIN == 0  # empty
        wire.send(abi.Opcode.WRITE, 4, struct.pack("<QQIIQII", writer, 0, 2, 0, 0, os.O_WRONLY, 0) + b"hi")
        notified = os.read(wire._replies, 1 << 16)  # the notification comes before the WRITE's reply
        _, code, unique = OUT_HDR.unpack_from(notified)
        assert (code, unique) == (abi.NotifyCode.POLL, 0)
        assert struct.unpack_from("<Q", notified, OUT_HDR.size)[0] == 77  # the poll handle it asked with
    finally:
        wire.close()
