"""nullmodem: two ports wired to each other, in process."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from pykld import Kernel
from pykld.tty import termios as t
from pykld.tty.termios import Termios


@pytest.fixture
def cable(kernel: Kernel, example: Callable[[str], str]) -> Kernel:
    kernel.kldload(example("nullmodem"))
    return kernel


def read_exactly(f, size: int) -> bytes:  # type: ignore[no-untyped-def]
    got = b""
    while len(got) < size:
        got += f.read(size - len(got))
    return got


def test_data_crosses_both_ways(cable: Kernel) -> None:
    with cable.open("/dev/ttyNULL0", os.O_RDWR) as a, cable.open("/dev/ttyNULL1", os.O_RDWR) as b:
        a.write(b"ping\n")
        assert read_exactly(b, 5) == b"ping\n"
        b.write(b"pong\n")
        assert read_exactly(a, 5) == b"pong\n"


def test_rts_is_the_other_ends_cts_and_dtr_its_dsr_and_cd(cable: Kernel) -> None:
    ends = cable.module("nullmodem").instance.cable.ends
    with cable.open("/dev/ttyNULL0", os.O_RDWR):
        assert ends[1].tty.signals == {"cts": True, "dsr": True, "cd": True, "ri": False}
        assert ends[0].tty.signals["cd"] is False  # nobody at the other end
    assert ends[1].tty.signals == {"cts": False, "dsr": False, "cd": False, "ri": False}  # HUPCL at close


def test_a_reader_far_behind_loses_nothing_of_a_megabyte(cable: Kernel) -> None:
    data = bytes(range(256)) * 2048  # 512 KiB: eight times what a tty queue holds
    with cable.open("/dev/ttyNULL0", os.O_RDWR) as a, cable.open("/dev/ttyNULL1", os.O_RDWR) as b:
        now = Termios.unpack(b.ioctl(t.TCGETS2, bytearray(t.TERMIOS2.size)).data or b"")
        b.ioctl(t.TCSETS2, now.with_speed(4000000).pack())  # a second and a half on the wire
        a.write(data)
        assert read_exactly(b, len(data)) == data
    assert cable.sysctl("dev.nullmodem.0.overruns") == 0


def test_bytes_for_an_end_nobody_has_open_are_lost(cable: Kernel) -> None:
    with cable.open("/dev/ttyNULL0", os.O_RDWR) as a:
        a.write(b"into the void")
    with cable.open("/dev/ttyNULL0", os.O_RDWR) as a, cable.open("/dev/ttyNULL1", os.O_RDWR | os.O_NONBLOCK) as b:
        with pytest.raises(BlockingIOError):
            b.read(100)
        a.write(b"now")
        b.set_blocking(True)
        assert read_exactly(b, 3) == b"now"
