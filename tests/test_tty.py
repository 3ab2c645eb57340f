"""The tty layer in process: what a serial device is told and what the program's side gets.

A recording device stands for a peripheral; the program's side is the in-process
file, which speaks what the pty transport speaks to a tty (read, write, TCGETS2,
TCSETS*2, TCFLSH) and what FUSE carries (TCGETS is ENOTTY there).
"""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable

import pytest

from pykld import Kernel
from pykld.tty import termios as t
from pykld.tty.termios import LineSettings, Termios
from pykld.tty.tty import TX_LIMIT

RECORDER = """
import errno
from pykld import Module
from pykld.tty import LineSettings, SerialDevice, make_tty

class Recorder(SerialDevice):
    line = LineSettings(1200)
    paced = PACED
    def __init__(self):
        self.events = []
    def open(self, tty): self.events.append(("open",))
    def close(self, tty): self.events.append(("close",))
    def received(self, tty, data): self.events.append(("received", data))
    def modem(self, tty, dtr, rts): self.events.append(("modem", dtr, rts))
    def param(self, tty, line):
        if line.speed == 12345:
            raise OSError(errno.EINVAL, "no such speed here")
        self.events.append(("param", str(line)))

class RecorderModule(Module):
    name = "recorder"
    def load(self):
        self.device = Recorder()
        self.tty = make_tty(self.device, "ttyREC0", mode=0o666)
"""


@pytest.fixture
def recorder(kernel: Kernel, load_driver: Callable[..., int]) -> Callable[[bool], tuple[object, object]]:
    def load(paced: bool = False) -> tuple[object, object]:
        load_driver(RECORDER.replace("PACED", str(paced)), name="recorder")
        instance = kernel.module("recorder").instance
        return instance.device, instance.tty
    return load


def termios_of(f) -> Termios:  # type: ignore[no-untyped-def]
    data = f.ioctl(t.TCGETS2, bytearray(t.TERMIOS2.size)).data
    return Termios.unpack(data)


def test_a_port_starts_as_a_uart_does_and_its_settings_persist(kernel: Kernel, recorder) -> None:
    device, _ = recorder()
    with kernel.open("/dev/ttyREC0", os.O_RDWR) as f:
        start = termios_of(f)
        assert start.line_settings() == LineSettings(1200)
        assert start.cflag & (t.CREAD | t.HUPCL | t.CLOCAL) == t.CREAD | t.HUPCL | t.CLOCAL
        assert start.cflag & t.CBAUD == 9  # B1200
        f.ioctl(t.TCSETS2, start.with_speed(4800).pack())
    with kernel.open("/dev/ttyREC0", os.O_RDWR) as f:
        assert termios_of(f).line_settings().speed == 4800  # across opens, as on a real UART
    assert ("param", "4800 8N1") in device.events


def test_a_custom_speed_under_bother_is_read_from_ospeed(kernel: Kernel, recorder) -> None:
    device, _ = recorder()
    with kernel.open("/dev/ttyREC0", os.O_RDWR) as f:
        custom = termios_of(f).with_speed(250000)
        assert custom.cflag & t.CBAUD == t.BOTHER
        f.ioctl(t.TCSETS2, custom.pack())
        assert termios_of(f).ospeed == 250000
    assert ("param", "250000 8N1") in device.events


def test_the_device_hears_framing_and_flow_control(kernel: Kernel, recorder) -> None:
    device, _ = recorder()
    with kernel.open("/dev/ttyREC0", os.O_RDWR) as f:
        now = termios_of(f)
        seven_even = Termios(now.iflag, now.oflag, (now.cflag & ~t.CSIZE) | t.CS7 | t.PARENB | t.CSTOPB | t.CRTSCTS,
                             now.lflag, 0, now.cc, now.ispeed, now.ospeed)
        f.ioctl(t.TCSETS2, seven_even.pack())
    assert ("param", "1200 7E2 rtscts") in device.events


def test_a_refused_speed_is_einval_and_changes_nothing(kernel: Kernel, recorder) -> None:
    recorder()
    with kernel.open("/dev/ttyREC0", os.O_RDWR) as f:
        before = termios_of(f)
        with pytest.raises(OSError) as refused:
            f.ioctl(t.TCSETS2, before.with_speed(12345).pack())
        assert refused.value.errno == errno.EINVAL
        assert termios_of(f) == before


def test_open_raises_dtr_and_rts_and_the_last_close_drops_them(kernel: Kernel, recorder) -> None:
    device, _ = recorder()
    f = kernel.open("/dev/ttyREC0", os.O_RDWR)
    g = kernel.open("/dev/ttyREC0", os.O_RDWR)
    f.write(b"AT\r")
    f.close()
    assert device.events == [("open",), ("modem", True, True), ("received", b"AT\r")]  # g still has it open
    g.close()
    assert device.events[-2:] == [("modem", False, False), ("close",)]  # HUPCL


def test_b0_hangs_up_and_a_speed_raises_the_lines_again(kernel: Kernel, recorder) -> None:
    device, _ = recorder()
    with kernel.open("/dev/ttyREC0", os.O_RDWR) as f:
        start = termios_of(f)
        f.ioctl(t.TCSETS2, start.with_speed(0).pack())
        f.ioctl(t.TCSETS2, start.pack())
    modem = [e for e in device.events if e[0] == "modem"]
    assert modem == [("modem", True, True), ("modem", False, False), ("modem", True, True), ("modem", False, False)]


def test_output_reaches_the_reader_in_order_and_poll_agrees(kernel: Kernel, recorder) -> None:
    _, tty = recorder()
    with kernel.open("/dev/ttyREC0", os.O_RDWR | os.O_NONBLOCK) as f:
        assert f.poll(select.POLLIN) == 0
        with pytest.raises(OSError) as empty:
            f.read(10)
        assert empty.value.errno == errno.EAGAIN
        assert tty.send(b"$GPRMC,1\r\n") == 10
        assert f.poll(select.POLLIN | select.POLLOUT) == select.POLLIN | select.POLLOUT
        assert f.read(4) + f.read(100) == b"$GPRMC,1\r\n"
        assert f.poll(select.POLLIN) == 0


def test_what_is_sent_to_a_closed_port_is_lost_and_counted(kernel: Kernel, recorder) -> None:
    _, tty = recorder()
    assert tty.send(b"nobody listens") == 14
    assert tty.dropped == 14
    with kernel.open("/dev/ttyREC0", os.O_RDWR | os.O_NONBLOCK) as f, pytest.raises(OSError) as empty:
        f.read(100)
    assert empty.value.errno == errno.EAGAIN


def test_a_full_queue_takes_only_what_fits(kernel: Kernel, recorder) -> None:
    _, tty = recorder()
    with kernel.open("/dev/ttyREC0", os.O_RDWR | os.O_NONBLOCK) as f:
        assert tty.send(b"x" * (TX_LIMIT - 3)) == TX_LIMIT - 3
        assert tty.room() == 3
        assert tty.send(b"abcdef") == 3
        got = b""
        while len(got) < TX_LIMIT:
            got += f.read(65536)
        assert got.endswith(b"xabc") and len(got) == TX_LIMIT


def test_paced_output_leaves_at_the_line_speed(kernel: Kernel, recorder, threads) -> None:
    _, tty = recorder(paced=True)
    with kernel.open("/dev/ttyREC0", os.O_RDWR) as f:
        line = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n" * 2
        tty.send(line)  # 138 characters at 1200 8N1: more than a second on the wire
        first = f.read(len(line))
        assert 1 <= len(first) < len(line) // 2  # a blocking read returns what has crossed so far
        rest = b""
        while len(first + rest) < len(line):
            rest += f.read(len(line))
        assert first + rest == line


def test_tcflush_drops_the_unread_output_and_checks_its_selector(kernel: Kernel, recorder) -> None:
    _, tty = recorder()
    with kernel.open("/dev/ttyREC0", os.O_RDWR | os.O_NONBLOCK) as f:
        tty.send(b"stale")
        f.ioctl(t.TCFLSH, t.TCIFLUSH)
        assert f.poll(select.POLLIN) == 0
        with pytest.raises(OSError) as bad:
            f.ioctl(t.TCFLSH, 7)
        assert bad.value.errno == errno.EINVAL


def test_tcgets_is_enotty_where_there_is_no_line_discipline(kernel: Kernel, recorder) -> None:
    """What FUSE carries to the device: isatty() and pyserial then report the usual error."""
    recorder()
    with kernel.open("/dev/ttyREC0", os.O_RDWR) as f:
        for legacy in (t.TCGETS, 0x5415):  # TCGETS, TIOCMGET
            with pytest.raises(OSError) as refused:
                f.ioctl(legacy)
            assert refused.value.errno == errno.ENOTTY


def test_the_device_cannot_set_an_output_line_as_an_input(kernel: Kernel, recorder) -> None:
    _, tty = recorder()
    tty.set_signals(cd=True, ri=False)
    assert tty.signals["cd"] is True
    with pytest.raises(ValueError, match="dtr"):
        tty.set_signals(dtr=True)


def test_make_tty_publishes_over_the_pty_transport_unless_told(kernel: Kernel, recorder) -> None:
    _, tty = recorder()
    assert tty.cdev.transport == "pty" and not tty.cdev.seekable
