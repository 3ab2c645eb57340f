"""The CUSE transport: true character devices.  Runs inside the VM (`make test-vm`),
where a stock Debian kernel has CUSE; elsewhere it skips, unless PYKLD_REQUIRE_CUSE=1."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from transport.conftest import AS_NOBODY, EXAMPLES, private_and_public, require, write_driver
from transport.test_fuse import READ_WITH_ALARM, sh

from pykld import Kernel
from pykld.transport.cuse import CuseTransport, cuse_available

FIOC_GET_SIZE = 0x80084500
FIOC_SET_SIZE = 0x40084501
FIOC_READ = 0x4502
FIOC_WRITE = 0x4503


class FiocRwArg(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_int64), ("buf", ctypes.c_void_p), ("size", ctypes.c_size_t),
                ("prev_size", ctypes.c_size_t), ("new_size", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)


def ioctl_ptr(fd: int, cmd: int, pointer: int) -> int:
    """ioctl(2) with a pointer argument (fcntl.ioctl takes only a C int or a buffer)."""
    result = _libc.ioctl(fd, ctypes.c_ulong(cmd), ctypes.c_void_p(pointer))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(result)


@pytest.fixture
def cuse() -> Iterator[Kernel]:
    require("CUSE", os.geteuid() == 0 and cuse_available(), "no CUSE here (root and /dev/cuse needed)")
    kernel = Kernel()
    transport = CuseTransport(kernel)
    transport.start()
    try:
        yield kernel
    finally:
        kernel.shutdown()
        transport.stop()


def test_seed_round_trip_on_a_character_device(cuse: Kernel) -> None:
    cuse.kldload(str(EXAMPLES / "hello.py"))
    assert sh("stat -c %F /dev/rustmodule").stdout.strip() == "character special file"
    assert stat.S_IMODE(os.stat("/dev/rustmodule").st_mode) == 0o666
    done = sh('echo "hi rust" > /dev/rustmodule; cat /dev/rustmodule')
    assert done.stdout == "hi rust\n", done.stderr


def read_fresh(path: str) -> bytes:
    """Everything a new open reads (CUSE keeps one position per open)."""
    with open(path, "rb", buffering=0) as device:
        return device.read(1 << 20)


def test_restricted_ioctls_and_sequential_io(cuse: Kernel) -> None:
    cuse.kldload(str(EXAMPLES / "membuf.py"))
    fd = os.open("/dev/membuf", os.O_RDWR)
    try:
        assert os.write(fd, b"hello") == 5
        assert os.write(fd, b" world") == 6  # each open has its own position
        assert read_fresh("/dev/membuf") == b"hello world"
        assert struct.unpack("Q", fcntl.ioctl(fd, FIOC_GET_SIZE, bytes(8)))[0] == 11
        fcntl.ioctl(fd, FIOC_SET_SIZE, struct.pack("Q", 5))
        assert read_fresh("/dev/membuf") == b"hello"
        with pytest.raises(OSError) as unknown:
            fcntl.ioctl(fd, 0x80084563, bytes(8))
        assert unknown.value.errno == errno.ENOTTY
    finally:
        os.close(fd)


@pytest.fixture(params=["direct", "rounds"])
def cuse_memory(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    """CUSE whose ioctls reach the caller's memory directly (process_vm_readv/writev, the
    default for root) or through the kernel's retry rounds (PYKLD_FUSE_USER_MEMORY=off)."""
    monkeypatch.setenv("PYKLD_FUSE_USER_MEMORY", "ptrace" if request.param == "direct" else "off")
    require("CUSE", os.geteuid() == 0 and cuse_available(), "no CUSE here (root and /dev/cuse needed)")
    kernel = Kernel()
    transport = CuseTransport(kernel)
    transport.start()
    try:
        yield kernel
    finally:
        kernel.shutdown()
        transport.stop()


def test_unrestricted_ioctl_follows_pointers(cuse_memory: Kernel) -> None:
    cuse = cuse_memory
    cuse.kldload(str(EXAMPLES / "membuf.py"))
    fd = os.open("/dev/membuf", os.O_RDWR)
    try:
        source = ctypes.create_string_buffer(b"through pointers", 16)
        arg = FiocRwArg(4, ctypes.addressof(source), 16, 0, 0)
        assert ioctl_ptr(fd, FIOC_WRITE, ctypes.addressof(arg)) == 16
        assert (arg.prev_size, arg.new_size) == (0, 20)
        assert read_fresh("/dev/membuf") == b"\0" * 4 + b"through pointers"
        target = ctypes.create_string_buffer(32)
        arg = FiocRwArg(12, ctypes.addressof(target), 32, 0, 0)
        assert ioctl_ptr(fd, FIOC_READ, ctypes.addressof(arg)) == 8
        assert target.raw[:8] == b"pointers" and (arg.prev_size, arg.new_size) == (20, 20)
    finally:
        os.close(fd)


def test_bad_pointer_is_efault_and_the_host_goes_on(cuse_memory: Kernel) -> None:
    cuse = cuse_memory
    cuse.kldload(str(EXAMPLES / "membuf.py"))
    fd = os.open("/dev/membuf", os.O_RDWR)
    try:
        with pytest.raises(OSError) as bad_arg:
            ioctl_ptr(fd, FIOC_READ, 0x10)
        assert bad_arg.value.errno == errno.EFAULT
        arg = FiocRwArg(0, 0x10, 8, 0, 0)  # a good argument pointing at a bad buffer
        os.write(fd, b"12345678")
        with pytest.raises(OSError) as bad_buf:
            ioctl_ptr(fd, FIOC_READ, ctypes.addressof(arg))
        assert bad_buf.value.errno == errno.EFAULT
        assert read_fresh("/dev/membuf") == b"12345678"
    finally:
        os.close(fd)


POINTER_CLIENT = """
import ctypes, sys
FIOC_READ, FIOC_WRITE = 0x4502, 0x4503
class Arg(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_int64), ("buf", ctypes.c_void_p), ("size", ctypes.c_size_t),
                ("prev_size", ctypes.c_size_t), ("new_size", ctypes.c_size_t)]
libc = ctypes.CDLL(None, use_errno=True)
device = open("/dev/membuf", "r+b", buffering=0)
fd = device.fileno()
source = ctypes.create_string_buffer(b"from nobody", 11)
arg = Arg(0, ctypes.addressof(source), 11, 0, 0)
wrote = libc.ioctl(fd, ctypes.c_ulong(FIOC_WRITE), ctypes.c_void_p(ctypes.addressof(arg)))
target = ctypes.create_string_buffer(11)
arg = Arg(5, ctypes.addressof(target), 6, 0, 0)
read = libc.ioctl(fd, ctypes.c_ulong(FIOC_READ), ctypes.c_void_p(ctypes.addressof(arg)))
print(wrote, read, target.raw[:6].decode(), arg.prev_size, arg.new_size)
"""


def test_pointer_ioctls_of_another_users_process(cuse_memory: Kernel) -> None:
    """The caller is another process, of another user: its memory, not the daemon's."""
    cuse_memory.kldload(str(EXAMPLES / "membuf.py"))
    done = subprocess.run([*AS_NOBODY.split(), sys.executable, "-c", POINTER_CLIENT], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == ["11", "6", "nobody", "11", "11"], done.stderr
    assert read_fresh("/dev/membuf") == b"from nobody"


def test_fifo_poll_wakes_and_nonblock_is_eagain(cuse: Kernel) -> None:
    cuse.kldload(str(EXAMPLES / "fifo.py"))
    fd = os.open("/dev/fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            os.read(fd, 10)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(0) == []
        writer = subprocess.Popen(["sh", "-c", "sleep 0.3; printf ping > /dev/fifo"])
        events = poller.poll(20_000)
        writer.wait(20)
        assert events and events[0][1] & select.POLLIN
        assert os.read(fd, 10) == b"ping"
    finally:
        os.close(fd)


def test_signal_gives_eintr(cuse: Kernel) -> None:
    cuse.kldload(str(EXAMPLES / "fifo.py"))
    done = subprocess.run([sys.executable, "-c", READ_WITH_ALARM, "/dev/fifo"], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split() == ["-1", str(errno.EINTR)], done.stderr
    assert sh("printf ok > /dev/fifo; head -c 2 /dev/fifo").stdout == "ok"


def test_non_root_gets_eacces_on_0600_node(cuse: Kernel, tmp_path: Path) -> None:
    cuse.kldload(write_driver(tmp_path, "private", private_and_public("pykld-")))
    as_nobody = AS_NOBODY
    denied = sh(f"{as_nobody} cat /dev/pykld-private")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert sh(f"{as_nobody} cat /dev/pykld-public").stdout == "secret\n"


def test_unload_removes_node_and_load_again_works(cuse: Kernel) -> None:
    cuse.kldload(str(EXAMPLES / "hello.py"))
    assert os.path.exists("/dev/rustmodule")
    cuse.kldunload("hello")
    assert not os.path.exists("/dev/rustmodule")
    cuse.kldload(str(EXAMPLES / "hello.py"))
    assert sh("cat /dev/rustmodule").stdout == "Default hello message\n"


def test_forced_unload_with_open_file_gives_enxio(cuse: Kernel) -> None:
    cuse.kldload(str(EXAMPLES / "hello.py"))
    fd = os.open("/dev/rustmodule", os.O_RDONLY)
    with pytest.raises(OSError) as busy:
        cuse.kldunload("hello")
    assert busy.value.errno == errno.EBUSY
    cuse.kldunload("hello", force=True)
    assert not os.path.exists("/dev/rustmodule")
    with pytest.raises(OSError) as gone:
        os.read(fd, 10)
    assert gone.value.errno == errno.ENXIO
    os.close(fd)


def test_a_destroyed_device_waits_for_its_last_close_and_says_so(cuse: Kernel,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUSE device of a cdev destroyed while open stays registered until the file is
    released, dmesg says when that takes long, and it goes as soon as the release comes."""
    monkeypatch.setattr("pykld.transport.cuse.DRAIN_REPORT", 0.2)
    registered = Path("/sys/class/cuse/rustmodule")
    cuse.kldload(str(EXAMPLES / "hello.py"))
    fd = os.open("/dev/rustmodule", os.O_RDONLY)
    cuse.kldunload("hello", force=True)
    try:
        report = "rustmodule: still 1 open file(s) on the destroyed device after 0.2 s"
        assert wait_until(lambda: any(report in line for line in cuse.dmesg())), cuse.dmesg()
        assert registered.exists()
    finally:
        os.close(fd)
    assert wait_until(lambda: not registered.exists())


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
