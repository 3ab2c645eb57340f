"""Writers that sleep in a driver over FUSE: each reaches the driver, each stays interruptible.

FUSE holds a file's inode lock through every WRITE round trip; held exclusively, one
writer asleep in the driver leaves every other writer of the device waiting for the lock
in uninterruptible sleep (issue 15).  Streams share the lock instead (FileOps.open_flags).
"""

from __future__ import annotations

import collections
import errno
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator

import pytest

from pykld import Kernel
from pykld.fuse import abi
from pykld.fuse.request import Init, Request
from pykld.transport.fuse import DevfsHandler, FuseTransport

from .conftest import EXAMPLES, require, wait_for

CAPACITY = 4096  # examples/fifo.py's default

# Writes argv[2] with write(2) itself (Python would retry on EINTR), then prints what it returned.
WRITER = textwrap.dedent("""
    import ctypes, os, signal, sys
    libc = ctypes.CDLL(None, use_errno=True)
    signal.signal(signal.SIGUSR1, lambda *a: None)
    fd = os.open(sys.argv[1], os.O_WRONLY)
    data = sys.argv[2].encode()
    n = libc.write(fd, data, len(data))
    print(n, ctypes.get_errno(), flush=True)
""")


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def no_writer_left() -> Iterator[None]:
    """A failed test leaves no writer behind, asleep or not."""
    yield
    while _started:
        proc = _started.pop()
        proc.kill()
        proc.communicate(timeout=10)


def start(*argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _started.append(proc)
    return proc


def start_writer(path: str, data: str) -> subprocess.Popen[str]:
    return start(WRITER, path, data)


def state(pid: int) -> str:
    """The process state ps shows: S (interruptible sleep), D (uninterruptible), ..."""
    with open(f"/proc/{pid}/stat") as proc:
        return proc.read().rpartition(")")[2].split()[0]


def in_driver(kernel: Kernel) -> int:
    """How many calls are inside the fifo driver now."""
    cdev = kernel.devfs.lookup("fifo")
    assert cdev is not None
    return len(cdev.active)


def drain(path: str, count: int) -> bytes:
    """`count` bytes from the fifo, and then nothing more; a fifo that runs dry first fails the test."""
    got = b""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while len(got) < count:
            if not select.select([fd], [], [], 10)[0]:
                raise AssertionError(f"the fifo ran dry after {len(got)} of {count} bytes")
            got += os.read(fd, 65536)
        with pytest.raises(BlockingIOError):
            os.read(fd, 1)
    finally:
        os.close(fd)
    return got


@pytest.fixture
def fifo(fuse: tuple[Kernel, FuseTransport]) -> tuple[Kernel, str]:
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "fifo.py"))
    path = transport.device_path("fifo")
    os.stat(path)  # waits for the kernel's INIT, which says whether it can
    require("PARALLEL_WRITES", transport.handler.parallel_writes,
            "this kernel's FUSE serialises the writes to one file (FUSE 7.38, Linux 6.2, lifts it)")
    return kernel, path


def test_writer_behind_a_sleeping_writer_gets_eintr_and_can_be_killed(fifo: tuple[Kernel, str]) -> None:
    """The reproduction of issue 15."""
    writer_behind_a_sleeping_writer_gets_eintr_and_can_be_killed(*fifo)


def test_several_writers_wait_in_the_driver_each_interruptible(fifo: tuple[Kernel, str]) -> None:
    several_writers_wait_in_the_driver_each_interruptible(*fifo)


# The checks, shared with tests/cuse (CUSE takes no lock around a write; the two must agree).


def writer_behind_a_sleeping_writer_gets_eintr_and_can_be_killed(kernel: Kernel, path: str) -> None:
    filler = start(f"import os; print(os.write(os.open({path!r}, os.O_WRONLY), b'x' * {2 * CAPACITY}))")
    assert wait_for(lambda: in_driver(kernel) == 1)  # A filled the fifo and sleeps in the driver
    b = start_writer(path, "y")
    assert wait_for(lambda: in_driver(kernel) == 2)  # B reached the driver too
    assert state(b.pid) == "S"
    b.send_signal(signal.SIGUSR1)
    out, err = b.communicate(timeout=1)
    assert out.split() == ["-1", str(errno.EINTR)], err
    killed = start_writer(path, "z")
    assert wait_for(lambda: in_driver(kernel) == 2)
    killed.kill()
    assert killed.wait(timeout=1) == -signal.SIGKILL
    assert drain(path, 2 * CAPACITY) == b"x" * 2 * CAPACITY  # neither y nor z
    assert filler.communicate(timeout=10)[0].strip() == str(2 * CAPACITY)


def several_writers_wait_in_the_driver_each_interruptible(kernel: Kernel, path: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    assert os.write(fd, b"a" * CAPACITY) == CAPACITY  # full
    os.close(fd)
    os.stat(path)  # as ls would; the kernel takes the file's size from us again
    letters = "BCDEFG"
    writers = {letter: start_writer(path, letter * 100) for letter in letters}
    assert wait_for(lambda: in_driver(kernel) == len(letters))  # all of them at once
    assert [state(w.pid) for w in writers.values()] == ["S"] * len(letters)
    interrupted, killed, survivors = "BDF", "C", "EG"
    for letter in interrupted:
        writers[letter].send_signal(signal.SIGUSR1)
    writers[killed].kill()
    for letter in interrupted:
        out, err = writers[letter].communicate(timeout=5)
        assert out.split() == ["-1", str(errno.EINTR)], err
    assert writers[killed].wait(timeout=5) == -signal.SIGKILL
    assert wait_for(lambda: in_driver(kernel) == len(survivors))
    got = drain(path, CAPACITY + 100 * len(survivors))
    assert collections.Counter(got) == collections.Counter(b"a" * CAPACITY + b"E" * 100 + b"G" * 100)
    for letter in survivors:
        assert writers[letter].communicate(timeout=5)[0].split() == ["100", "0"]


def test_many_writers_and_readers_lose_nothing(fifo: tuple[Kernel, str]) -> None:
    """Writers in parallel with readers, records bigger than the room in the fifo: every byte
    written is read exactly once."""
    _, path = fifo
    writers, readers, records, size = 8, 4, 20, 1500
    payload = {w: bytes([ord("a") + w]) * size for w in range(writers)}
    got: list[bytes] = []

    def write(w: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        for _ in range(records):
            view = memoryview(payload[w])
            while view:
                view = view[os.write(fd, view):]
        os.close(fd)

    def read(total: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        chunks, have = [], 0
        while have < total:
            chunk = os.read(fd, min(4096, total - have))
            chunks.append(chunk)
            have += len(chunk)
        got.append(b"".join(chunks))
        os.close(fd)

    total = writers * records * size
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    # Readers take exact shares, so none waits for bytes another already took.
    threads += [threading.Thread(target=read, args=(total // readers,)) for _ in range(readers)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads)  # the fixture's shutdown wakes what hangs
    counts = collections.Counter(b"".join(got))
    assert counts == {ord("a") + w: records * size for w in range(writers)}


def test_stream_size_survives_a_truncating_open(fifo: tuple[Kernel, str]) -> None:
    """The size a stream reports is never an offset: the file does not seek, and a truncating
    open (a shell's `>`) leaves the size alone, so writers still share the driver after it."""
    kernel, path = fifo
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        for seek in (lambda: os.lseek(fd, 0, os.SEEK_END), lambda: os.pwrite(fd, b"x", 0)):
            with pytest.raises(OSError) as refused:
                seek()
            assert refused.value.errno == errno.ESPIPE
    finally:
        os.close(fd)
    writer_behind_a_sleeping_writer_gets_eintr_and_can_be_killed(kernel, path)


@pytest.mark.parametrize(("minor", "parallel"), [(37, False), (38, True)])
def test_mount_says_when_the_kernel_serialises_writers(minor: int, parallel: bool) -> None:
    """Linux 6.1 (FUSE 7.37) cannot run a file's writers in parallel: dmesg says so at INIT."""
    kernel = Kernel()
    handler = DevfsHandler(kernel)
    handler.session = types.SimpleNamespace()  # type: ignore[assignment]
    handler.do_init(Request(abi.Opcode.INIT, 1, 0, 0, 0, 0, Init(7, minor, 0, 0)))
    assert handler.parallel_writes is parallel
    said = [line for line in kernel.dmesg() if "serialises the writes to each device" in line]
    assert len(said) == (0 if parallel else 1)
