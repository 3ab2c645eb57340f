"""The counter example over FUSE: a ticker callout, blocking read, select and ioctls from
real system calls; and file.nonblock following fcntl(F_SETFL) after open."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import textwrap
from pathlib import Path

import pytest
from counter_ioctl import CIOCGCOUNT, CIOCRESET, CIOCSINTERVAL, COUNT, INTERVAL

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

from .conftest import EXAMPLES, write_driver


@pytest.fixture
def counter(fuse: tuple[Kernel, FuseTransport], monkeypatch: pytest.MonkeyPatch) -> str:
    kernel, transport = fuse
    monkeypatch.setenv("PYKLD_COUNTER_INTERVAL_MS", "0")
    kernel.kldload(str(EXAMPLES / "counter.py"))
    return transport.device_path("counter")


def test_counter_ticks_blocks_polls_and_answers_ioctls(fuse: tuple[Kernel, FuseTransport], counter: str,
                                                       threads) -> None:
    kernel, _ = fuse
    fd = os.open(counter, os.O_RDONLY)
    try:
        assert select.select([fd], [], [], 0.05)[0] == []  # nothing new yet
        fcntl.ioctl(fd, CIOCSINTERVAL, INTERVAL.pack(20))
        assert select.select([fd], [], [], 30)[0] == [fd]  # woken by the ticker's selwakeup
        first = int(os.read(fd, 64))
        second = int(os.read(fd, 64))  # blocks until the next tick
        assert second > first >= 1
        fcntl.ioctl(fd, CIOCSINTERVAL, INTERVAL.pack(0))
        (count,) = COUNT.unpack(fcntl.ioctl(fd, CIOCGCOUNT, bytes(COUNT.size)))
        assert count >= second
        fcntl.ioctl(fd, CIOCRESET)
        assert os.read(fd, 64) == b"0\n"
        os.set_blocking(fd, False)
        read = threads.start(lambda: os.read(fd, 64))  # nothing new, and the ticker is stopped
        read.thread.join(5)
        if read.thread.is_alive():  # it sleeps: end it (ENXIO) rather than hang the suite
            kernel.kldunload("counter", force=True)
        threads.join(read)
        assert isinstance(read.error, BlockingIOError)
    finally:
        os.close(fd)


def test_file_nonblock_follows_fcntl_after_open(fuse: tuple[Kernel, FuseTransport], tmp_path: Path) -> None:
    kernel, transport = fuse
    kernel.kldload(write_driver(tmp_path, "flags", textwrap.dedent("""
        from pykld import CharacterDevice, Module, make_dev

        class Flags(CharacterDevice):
            seekable = False

            def read(self, file, uio):
                uio.uiomove(b"nonblock\\n" if file.nonblock else b"blocking\\n")

        class FlagsModule(Module):
            name = "flags"

            def load(self):
                make_dev(Flags(), "flags", mode=0o666)
    """)))
    fd = os.open(transport.device_path("flags"), os.O_RDONLY)
    try:
        assert os.read(fd, 64) == b"blocking\n"
        os.set_blocking(fd, False)  # fcntl(F_SETFL, O_NONBLOCK) after open
        assert os.read(fd, 64) == b"nonblock\n"
        os.set_blocking(fd, True)
        assert os.read(fd, 64) == b"blocking\n"
    except OSError as exc:
        assert exc.errno != errno.EIO, "the driver faulted"
        raise
    finally:
        os.close(fd)
