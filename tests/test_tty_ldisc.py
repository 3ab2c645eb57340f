"""pykld's own line discipline (a port made with transport="cuse"), in process.

The program's side is the in-process file with a SimMemory for the pointer
arguments of the legacy tty ioctls, as CUSE hands them to the driver; the device
is a recorder.  The same port over a real CUSE node with pyserial and stty is
tests/cuse/test_serial_cuse.py.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import time
from collections.abc import Callable

import pytest

from pykld import Kernel
from pykld.kernel.fd import SimFile, SimMemory
from pykld.tty import termios as t
from pykld.tty.termios import Termios

RECORDER = """
from pykld import Module
from pykld.tty import LineSettings, SerialDevice, make_tty

class Recorder(SerialDevice):
    line = LineSettings(9600)
    paced = False
    def __init__(self):
        self.events = []
        self.wrote = bytearray()
    def received(self, tty, data): self.wrote += data
    def modem(self, tty, dtr, rts): self.events.append(("modem", dtr, rts))
    def brk(self, tty, on): self.events.append(("break", on))
    def param(self, tty, line): self.events.append(("param", line.speed))

class RecorderModule(Module):
    name = "recorder"
    def load(self):
        self.device = Recorder()
        self.tty = make_tty(self.device, "ttyLD0", mode=0o666, transport="cuse")
"""
INT = struct.Struct("<i")


class Port:
    """One open of the port, with tcgetattr/tcsetattr as glibc 2.36 does them (TCGETS, TCSETS)."""

    def __init__(self, f: SimFile) -> None:
        self.f, self.mem = f, SimMemory()

    def ioctl_int(self, cmd: int, value: int = 0) -> int:
        addr = self.mem.alloc(INT.pack(value))
        self.f.ioctl(cmd, addr, self.mem)
        return INT.unpack(self.mem.read(addr, 4))[0]

    def tcgetattr(self) -> bytes:
        addr = self.mem.alloc(t.TERMIOS)
        self.f.ioctl(t.TCGETS, addr, self.mem)
        return self.mem.read(addr, t.TERMIOS)

    def tcsetattr(self, data: bytes, cmd: int = t.TCSETS) -> None:
        self.f.ioctl(cmd, self.mem.alloc(data), self.mem)

    def set(self, *, lflag_off: int = 0, vmin: int | None = None, vtime: int | None = None,
            iflag_off: int = 0, oflag_off: int = 0, cflag: int | None = None) -> None:
        tio = bytearray(self.tcgetattr())
        iflag, oflag, cf, lflag = struct.unpack_from("<4I", tio)
        struct.pack_into("<4I", tio, 0, iflag & ~iflag_off, oflag & ~oflag_off, cf if cflag is None else cflag,
                         lflag & ~lflag_off)
        if vmin is not None:
            tio[17 + t.VMIN] = vmin
        if vtime is not None:
            tio[17 + t.VTIME] = vtime
        self.tcsetattr(bytes(tio))

    def raw(self, vmin: int = 0, vtime: int = 0) -> None:
        """pyserial's settings: no ICANON, no ECHO, no OPOST."""
        self.set(lflag_off=t.ICANON | t.ECHO | t.ISIG | t.IEXTEN, oflag_off=t.OPOST, iflag_off=t.ICRNL,
                 vmin=vmin, vtime=vtime)


@pytest.fixture
def port(kernel: Kernel, load_driver: Callable[..., int]) -> Callable[..., tuple[object, object, Port]]:
    def open_port(flags: int = os.O_RDWR) -> tuple[object, object, Port]:
        if kernel.devfs.lookup("ttyLD0") is None:
            load_driver(RECORDER, name="recorder")
        instance = kernel.module("recorder").instance
        return instance.device, instance.tty, Port(kernel.open("/dev/ttyLD0", flags))
    return open_port


def test_both_termios_families_answer_and_agree(port) -> None:
    device, _, p = port()
    legacy = p.tcgetattr()  # isatty() is this call answering
    assert len(legacy) == 36
    assert struct.unpack_from("<I", legacy, 8)[0] & t.CBAUD == 0xD  # B9600
    fresh = bytearray(legacy)
    struct.pack_into("<I", fresh, 8, (struct.unpack_from("<I", legacy, 8)[0] & ~t.CBAUD) | 0x1002)  # B115200
    p.tcsetattr(bytes(fresh), t.TCSETSW)
    assert p.tcgetattr() == bytes(fresh)  # what stty reads back to verify
    two = Termios.unpack(p.f.ioctl(t.TCGETS2, bytearray(t.TERMIOS2.size)).data or b"")
    assert (two.ispeed, two.ospeed) == (115200, 115200)
    assert ("param", 115200) in device.events
    custom = two.with_speed(250000)
    p.f.ioctl(t.TCSETS2, custom.pack())
    assert Termios.unpack(p.f.ioctl(t.TCGETS2, bytearray(t.TERMIOS2.size)).data or b"").ospeed == 250000
    assert ("param", 250000) in device.events


def test_modem_lines_out_to_the_device_and_in_from_it(port) -> None:
    device, tty, p = port()
    assert p.ioctl_int(t.TIOCMGET) & (t.TIOCM_DTR | t.TIOCM_RTS) == t.TIOCM_DTR | t.TIOCM_RTS
    p.ioctl_int(t.TIOCMBIC, t.TIOCM_DTR)
    assert device.events[-1] == ("modem", False, True)
    p.ioctl_int(t.TIOCMSET, t.TIOCM_DTR)
    assert device.events[-1] == ("modem", True, False)
    p.ioctl_int(t.TIOCMBIS, t.TIOCM_RTS)
    assert device.events[-1] == ("modem", True, True)
    tty.set_signals(cd=True, cts=True)
    bits = p.ioctl_int(t.TIOCMGET)
    assert bits & (t.TIOCM_CD | t.TIOCM_CTS | t.TIOCM_RI | t.TIOCM_DSR) == t.TIOCM_CD | t.TIOCM_CTS


def test_tiocmiwait_sleeps_until_a_watched_line_changes(port, threads) -> None:
    _, tty, p = port(os.O_RDWR | os.O_NONBLOCK)  # pyserial's O_NONBLOCK: TIOCMIWAIT still waits
    waiter = threads.start(lambda: p.f.ioctl(t.TIOCMIWAIT, t.TIOCM_CD).result)
    time.sleep(0.05)
    tty.set_signals(ri=True)  # not watched
    time.sleep(0.05)
    assert waiter.thread.is_alive()
    tty.set_signals(cd=True)
    threads.join(waiter)
    assert waiter.result() == 0


def test_vmin_vtime_rules(port, threads) -> None:
    _, tty, p = port()
    p.raw(0, 0)
    assert p.f.read(10) == b""  # 0/0: what is there, even nothing
    tty.send(b"abc")
    assert p.f.read(10) == b"abc"
    p.raw(vmin=0, vtime=2)
    start = time.monotonic()
    assert p.f.read(10) == b""  # VTIME tenths, then nothing
    assert time.monotonic() - start >= 0.15
    p.raw(vmin=4, vtime=0)
    reader = threads.start(lambda: p.f.read(10))
    tty.send(b"12")
    time.sleep(0.05)
    assert reader.thread.is_alive()  # VMIN not reached
    tty.send(b"34")
    threads.join(reader)
    assert reader.result() == b"1234"


def test_nonblocking_reads(port) -> None:
    _, tty, p = port(os.O_RDWR | os.O_NONBLOCK)
    p.raw(0, 0)
    assert p.f.read(10) == b""  # n_tty: 0/0 returns 0 bytes before looking at O_NONBLOCK
    p.raw(vmin=1, vtime=0)
    with pytest.raises(OSError) as empty:
        p.f.read(10)
    assert empty.value.errno == errno.EAGAIN
    tty.send(b"x")
    assert p.f.read(10) == b"x"


def test_poll_agrees_with_read_and_vmin(port) -> None:
    _, tty, p = port(os.O_RDWR | os.O_NONBLOCK)
    p.raw(vmin=3, vtime=0)
    assert p.f.poll(select.POLLIN | select.POLLOUT) == select.POLLOUT
    tty.send(b"ab")
    assert not p.f.poll(select.POLLIN) & select.POLLIN  # n_tty: VMIN bytes make it readable
    tty.send(b"c")
    assert p.f.poll(select.POLLIN) & select.POLLIN
    assert p.ioctl_int(t.TIOCINQ) == 3
    assert p.ioctl_int(t.TIOCOUTQ) == 0


def test_canonical_lines_with_erase_kill_eof_echo_and_crnl(port) -> None:
    device, tty, p = port(os.O_RDWR | os.O_NONBLOCK)  # default termios: ICANON ECHO ICRNL OPOST ONLCR
    tty.send(b"hellp\x7fo\r")
    assert p.f.read(100) == b"hello\n"  # ERASE took the p, CR became NL, one line per read
    assert bytes(device.wrote) == b"hellp\b \bo\r\n"  # ECHO (ECHOE), and ONLCR on the echoed newline
    tty.send(b"junk\x15two\nthree")
    assert p.f.read(100) == b"two\n"  # KILL dropped the line
    with pytest.raises(OSError) as partial:
        p.f.read(100)
    assert partial.value.errno == errno.EAGAIN  # "three" is no line yet
    assert p.f.poll(select.POLLIN) == 0
    tty.send(b"\x04")
    assert p.f.read(100) == b"three"  # EOF ends the line, and is not read
    tty.send(b"\x04")
    assert p.f.read(100) == b""  # EOF at the start of a line: end of file


def test_write_maps_nl_to_crnl_under_onlcr_only(port) -> None:
    device, _, p = port()
    p.f.write(b"AT\n")
    assert bytes(device.wrote) == b"AT\r\n"
    p.raw()
    p.f.write(b"AT\n")
    assert bytes(device.wrote) == b"AT\r\nAT\n"


def test_flush_break_xonc_and_unknown(port) -> None:
    device, tty, p = port(os.O_RDWR | os.O_NONBLOCK)
    p.raw()
    tty.send(b"stale")
    p.f.ioctl(t.TCFLSH, t.TCIFLUSH)
    assert p.f.read(10) == b""
    p.f.ioctl(t.TCSBRK, 1)  # tcdrain: no break
    assert ("break", True) not in device.events
    p.f.ioctl(t.TCSBRKP, 1)  # pyserial's send_break(0.25), despite O_NONBLOCK
    assert device.events[-2:] == [("break", True), ("break", False)]
    p.f.ioctl(t.TCXONC, t.TCOON)
    with pytest.raises(OSError) as bad:
        p.f.ioctl(t.TCXONC, 7)
    assert bad.value.errno == errno.EINVAL
    with pytest.raises(OSError) as unknown:
        p.f.ioctl(0x5480, 0)
    assert unknown.value.errno == errno.ENOTTY


def test_exclusive_open_is_ebusy_for_others_until_the_last_close(kernel: Kernel, port) -> None:
    _, _, p = port()
    p.f.ioctl(t.TIOCEXCL, 0)
    with pytest.raises(OSError) as busy:
        kernel.open("/dev/ttyLD0", os.O_RDWR, uid=65534)
    assert busy.value.errno == errno.EBUSY
    kernel.open("/dev/ttyLD0", os.O_RDWR).close()  # root may
    p.f.ioctl(t.TIOCNXCL, 0)
    kernel.open("/dev/ttyLD0", os.O_RDWR, uid=65534).close()
    p.f.ioctl(t.TIOCEXCL, 0)
    p.f.close()
    kernel.open("/dev/ttyLD0", os.O_RDWR, uid=65534).close()  # cleared at the last close


def test_a_bnnn_code_sets_the_speeds_termios2_reports(port) -> None:
    device, _, p = port()
    stale = Termios.unpack(p.f.ioctl(t.TCGETS2, bytearray(t.TERMIOS2.size)).data or b"")
    code_only = Termios(stale.iflag, stale.oflag, (stale.cflag & ~t.CBAUD) | 0xC, stale.lflag, 0, stale.cc,
                        stale.ispeed, stale.ospeed)  # B4800, c_ispeed/c_ospeed still 9600
    p.f.ioctl(t.TCSETS2, code_only.pack())
    now = Termios.unpack(p.f.ioctl(t.TCGETS2, bytearray(t.TERMIOS2.size)).data or b"")
    assert (now.ispeed, now.ospeed) == (4800, 4800)
    assert ("param", 4800) in device.events
