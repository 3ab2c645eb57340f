"""fail(9) fault points over FUSE (and CUSE: tests/cuse/test_testing_cuse.py runs these
in the VM), seen by real system calls of a program: each
operation's errno, short transfers, corrupt ioctl results, POLLERR, the counter and
dmesg, and a delay that the caller's signal ends."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

from .conftest import EXAMPLES, wait_for

GET_SIZE = 0x80084500  # membuf's FIOC_GET_SIZE, _IOR('E', 0, 8)
SET_SIZE = 0x40084501  # FIOC_SET_SIZE, _IOW('E', 1, 8)


def load_membuf(kernel: Kernel, path: str) -> tuple[Kernel, str]:
    """membuf loaded, holding 0123456789, at `path` (where its transport publishes it)."""
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    fd = os.open(path, os.O_WRONLY)
    os.write(fd, b"0123456789")
    os.close(fd)
    return kernel, path


@pytest.fixture
def membuf(fuse: tuple[Kernel, FuseTransport]) -> tuple[Kernel, str]:
    kernel, transport = fuse
    return load_membuf(kernel, transport.device_path("membuf"))


def errno_of(call: object) -> int | None:
    try:
        call()  # type: ignore[operator]
    except OSError as exc:
        return exc.errno
    return None


def test_every_operation_fails_as_its_rule_says(membuf: tuple[Kernel, str]) -> None:
    kernel, path = membuf
    kernel.fail("membuf", "open", "error", errno.EACCES, times=1)
    assert errno_of(lambda: os.open(path, os.O_RDWR)) == errno.EACCES
    for op, code in (("read", errno.EIO), ("write", errno.ENOSPC), ("ioctl", errno.EREMOTEIO)):
        kernel.fail("membuf", op, "error", code, times=1)
    kernel.fail("membuf", "poll", "error", errno.EIO, times=1)
    kernel.fail("membuf", "close", "error", errno.EIO, times=1)
    fd = os.open(path, os.O_RDWR)
    try:
        assert errno_of(lambda: os.pread(fd, 4, 0)) == errno.EIO
        assert errno_of(lambda: os.pwrite(fd, b"x", 0)) == errno.ENOSPC
        assert errno_of(lambda: fcntl.ioctl(fd, GET_SIZE, bytes(8))) == errno.EREMOTEIO
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(5000) == [(fd, select.POLLERR)]
        assert os.pread(fd, 10, 0) == b"0123456789"  # each rule fired once; the data is intact
    finally:
        os.close(fd)  # close(2) over FUSE cannot fail (RELEASE has no caller): counted and logged
    cdev = kernel.lookup("membuf")
    assert wait_for(lambda: cdev.stats.injected == 6)
    assert sum("/dev/membuf close: injected error EIO" in line for line in kernel.dmesg()) == 1


def test_short_transfers_and_corruption_reach_the_program(membuf: tuple[Kernel, str]) -> None:
    kernel, path = membuf
    kernel.fail("membuf", "read", "short", 4, times=1)
    kernel.fail("membuf", "write", "short", 1, times=1)
    kernel.fail("membuf", "ioctl", "corrupt", 8, cmd=GET_SIZE, times=1)
    done = subprocess.run(["dd", f"if={path}", "bs=10", "count=1", "status=none"], capture_output=True, timeout=30)
    assert done.stdout == b"0123"  # dd's one read came back short
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pwrite(fd, b"ab", 0) == 1
        size = fcntl.ioctl(fd, SET_SIZE, (10).to_bytes(8, "little"))  # not matched: the filter is GET_SIZE
        assert size == (10).to_bytes(8, "little")
        assert fcntl.ioctl(fd, GET_SIZE, bytes(8)) == bytes(b ^ 0xFF for b in (10).to_bytes(8, "little"))
        assert fcntl.ioctl(fd, GET_SIZE, bytes(8)) == (10).to_bytes(8, "little")
    finally:
        os.close(fd)
    with open(path, "rb", buffering=0) as again:  # a new open: over CUSE pread offsets never reach the driver
        assert again.read(10) == b"a123456789"


def test_a_signal_ends_an_injected_delay_with_eintr(membuf: tuple[Kernel, str]) -> None:
    kernel, path = membuf
    kernel.fail("membuf", "read", "delay", 600)
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import errno, os, signal, sys
        class Stop(Exception): pass
        def stop(signum, frame): raise Stop
        signal.signal(signal.SIGUSR1, stop)
        fd = os.open({path!r}, os.O_RDONLY)
        print("open", flush=True)
        try:
            os.read(fd, 10)
        except Stop:
            print("interrupted", flush=True)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "open\n"
        cdev = kernel.lookup("membuf")
        assert wait_for(lambda: cdev.stats.injected == 1)
        reader.send_signal(signal.SIGUSR1)
        out, _ = reader.communicate(timeout=20)  # not the 600 s of the delay
        assert out == "interrupted\n" and reader.returncode == 0
        assert cdev.stats.reads == 0  # the read ended in EINTR during the delay, before the driver
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
