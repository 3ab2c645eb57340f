"""Serial ports over CUSE (inside the VM), with pykld's own line discipline under them:
pyserial and coreutils' stty against a true character device that answers the tty
ioctls itself, and examples/modem.py's modem lines (CD, DTR) as pyserial sees them.

Unlike the pty transport (tests/transport/test_serial_pty.py), the modem lines
exist and parity crosses; the node is not in /sys/class/tty (spec §4.3)."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from transport.conftest import AS_NOBODY, EXAMPLES, require, wait_for

from pykld import Kernel
from pykld.transport.cuse import CuseTransport, cuse_available

TIOCEXCL = 0x540C
LOOP = "/dev/ttyLD0"
MODEM = "/dev/ttyACM0"

# A port that upper-cases what it is sent back and records what it hears.
LOOPBACK = """
from pykld import Module
from pykld.tty import LineSettings, SerialDevice, make_tty

class Loopback(SerialDevice):
    line = LineSettings(115200)
    paced = False
    def __init__(self):
        self.events = []
    def received(self, tty, data):
        self.events.append(("received", data))
        tty.send(data.upper())
    def param(self, tty, line): self.events.append(("param", str(line)))
    def modem(self, tty, dtr, rts): self.events.append(("modem", dtr, rts))
    def brk(self, tty, on): self.events.append(("break", on))

class LoopbackModule(Module):
    name = "loopback"
    def load(self):
        self.device = Loopback()
        self.tty = make_tty(self.device, "ttyLD0", mode=0o666, transport="cuse")
"""


@pytest.fixture(scope="module")
def cuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    require("CUSE", os.geteuid() == 0 and cuse_available(), "no CUSE here (root and /dev/cuse needed)")
    kernel = Kernel()
    transport = CuseTransport(kernel)
    transport.start()
    try:
        source = tmp_path_factory.mktemp("serial") / "loopback.py"
        source.write_text(textwrap.dedent(LOOPBACK))
        kernel.kldload(str(source))
        os.environ["PYKLD_TTY_TRANSPORT"] = "cuse"  # the example unchanged, its port moved to CUSE
        try:
            kernel.kldload(str(EXAMPLES / "modem.py"))
        finally:
            del os.environ["PYKLD_TTY_TRANSPORT"]
        kernel.sysctl("dev.modem.0.dial_ms", 0)
        yield kernel
    finally:
        kernel.shutdown()
        transport.stop()


@pytest.fixture
def loop(cuse: Kernel) -> object:
    device = cuse.module("loopback").instance.device
    device.events.clear()
    return device


def stty(*args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    command = [*(AS_NOBODY.split() if as_nobody else []), "stty", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)


def test_a_true_character_device_that_is_a_tty(cuse: Kernel) -> None:
    assert stat.S_ISCHR(os.stat(LOOP).st_mode)
    assert stat.S_IMODE(os.stat(LOOP).st_mode) == 0o666  # make_tty's, not udev's tty rule (dialout, 0660)
    fd = os.open(LOOP, os.O_RDWR | os.O_NOCTTY)
    try:
        assert os.isatty(fd)  # glibc's TCGETS, answered by pykld
    finally:
        os.close(fd)
    assert not Path("/sys/class/tty/ttyLD0").exists()


@pytest.mark.parametrize("baud", [9600, 115200, 250000])
def test_pyserial_at_several_speeds_talks_and_the_device_hears_the_speed(loop: object, baud: int) -> None:
    with serial.Serial(LOOP, baud, timeout=2) as port:
        port.write(b"hello\n")
        assert port.read(6) == b"HELLO\n"  # raw: no ONLCR on the way out, no ICRNL on the way in
    assert ("param", f"{baud} 8N1") in loop.events  # type: ignore[attr-defined]


def test_readline_with_a_timeout_returns_what_came(loop: object) -> None:
    with serial.Serial(LOOP, 115200, timeout=0.3) as port:
        port.write(b"one\ntwo")
        assert port.readline() == b"ONE\n"
        assert port.readline() == b"TWO"  # the timeout ends a line that does not come


def test_in_waiting_and_reset_input_buffer(loop: object) -> None:
    with serial.Serial(LOOP, 115200, timeout=1) as port:
        port.write(b"abcd")
        assert wait_for(lambda: port.in_waiting == 4)  # TIOCINQ, answered by the driver
        assert port.out_waiting == 0
        port.reset_input_buffer()
        assert port.in_waiting == 0
        port.write(b"z")
        assert port.read(1) == b"Z"


def test_exclusive_opens(loop: object) -> None:
    with serial.Serial(LOOP, 115200, exclusive=True), pytest.raises(serial.SerialException, match="lock"):
        serial.Serial(LOOP, 115200, exclusive=True)
    fd = os.open(LOOP, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.ioctl(fd, TIOCEXCL)
        done = stty("-F", LOOP, as_nobody=True)
        assert done.returncode != 0 and "Device or resource busy" in done.stderr
    finally:
        os.close(fd)
    assert stty("-F", LOOP, as_nobody=True).returncode == 0  # cleared at the last close


def test_modem_lines_break_and_pyserial(loop: object, cuse: Kernel) -> None:
    tty = cuse.module("loopback").instance.tty
    with serial.Serial(LOOP, 115200, timeout=1) as port:
        assert ("modem", True, True) in loop.events  # type: ignore[attr-defined]
        port.rts = False
        assert loop.events[-1] == ("modem", True, False)  # type: ignore[attr-defined]
        assert not port.cts
        tty.set_signals(cts=True, dsr=True)
        assert port.cts and port.dsr and not port.ri
        port.send_break(0.25)  # TCSBRKP 1
        assert loop.events[-2:] == [("break", True), ("break", False)]  # type: ignore[attr-defined]
    tty.set_signals(cts=False, dsr=False)


def test_the_modem_raises_cd_on_connect_and_a_dtr_drop_hangs_up(cuse: Kernel) -> None:
    with serial.Serial(MODEM, 115200, timeout=2) as port:
        port.write(b"ATE0\r")
        assert port.read_until(b"OK\r\n").endswith(b"OK\r\n")
        assert not port.cd
        port.write(b"ATD5551234\r")
        assert port.read_until(b"CONNECT 115200\r\n").endswith(b"CONNECT 115200\r\n")
        assert port.cd  # TIOCMGET: the modem's set_signals(cd=True)
        port.dtr = False  # &D2
        assert wait_for(lambda: not cuse.sysctl("dev.modem.0.connected"))
        assert not port.cd


def test_stty_sets_the_speed_and_shows_everything(loop: object) -> None:
    assert stty("-F", LOOP, "4800").returncode == 0  # TCSETSW, then TCGETS must read back the same
    assert ("param", "4800 8N1") in loop.events  # type: ignore[attr-defined]
    assert stty("-F", LOOP, "speed").stdout.strip() == "4800"
    shown = stty("-a", "-F", LOOP)
    assert shown.returncode == 0, shown.stderr
    assert "speed 4800 baud" in shown.stdout and "rows 0; columns 0" in shown.stdout
    done = stty("-F", LOOP, "115200", "parenb", "cs7")  # parity crosses, unlike a pty
    assert done.returncode == 0, done.stderr
    assert ("param", "115200 7E1") in loop.events  # type: ignore[attr-defined]
    assert stty("-F", LOOP, "-parenb", "cs8").returncode == 0
