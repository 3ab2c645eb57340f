"""Serial ports over the pty transport, driven by pyserial and coreutils' stty.

A kernel in this process publishes its ttys as pseudo-terminals in a dev dir
(no /dev symlinks: bind=False); the programs are real ones, in this process
(pyserial) or as subprocesses, as root and as nobody.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import subprocess
import textwrap
import tty as termios_tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pynmea2
import pytest
import serial

from pykld import Kernel
from pykld.transport.pty import PtyTransport

from .conftest import AS_NOBODY, EXAMPLES, published, wait_for

TIOCEXCL = 0x540C

# A port that upper-cases what it is sent back, records what it hears, and can
# flood the program with a numbered sequence, keeping what the queue refused.
LOOPBACK = """
import errno
import time
from pykld import Module, Mutex, callout_init_mtx, callout_reset
from pykld.tty import LineSettings, SerialDevice, make_tty

class Loopback(SerialDevice):
    line = LineSettings(115200)
    paced = False
    def __init__(self):
        self.mtx = Mutex("loopback")
        self.events = []
        self.unsent = b""
        self.refused = 0
        self.pump = callout_init_mtx(self.mtx)
    def received(self, tty, data):
        self.events.append(("received", data))
        tty.send(data.upper())
    def param(self, tty, line):
        if line.speed == 12345:
            raise OSError(errno.EINVAL, "no 12345 baud here")
        self.events.append(("param", str(line)))
    slow_open = 0.0
    def open(self, tty):
        time.sleep(self.slow_open)  # a device slow to open: the program may have come and gone meanwhile
        self.events.append(("open",))
    def close(self, tty): self.events.append(("close",))
    def flood(self, tty, count):
        with self.mtx:
            self.unsent += b"".join(b"%08d\\n" % i for i in range(count))
            self.push(tty)
    def push(self, tty):
        taken = tty.send(self.unsent)
        self.refused += taken < len(self.unsent)
        self.unsent = self.unsent[taken:]
        if self.unsent:
            callout_reset(self.pump, 0.01, self.push, tty)

class LoopbackModule(Module):
    name = "loopback"
    def load(self):
        self.device = Loopback()
        self.tty = make_tty(self.device, "ttyLOOP0", uid=UID, gid=GID, mode=MODE)
"""


@pytest.fixture
def ptys(dev_dir: str) -> Iterator[tuple[Kernel, PtyTransport]]:
    with published(lambda kernel: PtyTransport(kernel, dev_dir, bind=False)) as served:
        yield served


@pytest.fixture
def loopback(ptys: tuple[Kernel, PtyTransport], tmp_path: Path) -> Callable[..., tuple[object, object, str]]:
    kernel, transport = ptys

    def load(uid: int = 0, gid: int = 0, mode: int = 0o666) -> tuple[object, object, str]:
        source = LOOPBACK.replace("UID", str(uid)).replace("GID", str(gid)).replace("MODE", oct(mode))
        path = tmp_path / "loopback.py"
        path.write_text(textwrap.dedent(source))
        kernel.kldload(str(path))
        instance = kernel.module("loopback").instance
        return instance.device, instance.tty, transport.device_path("ttyLOOP0")
    return load


def stty(*args: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    command = [*(AS_NOBODY.split() if as_nobody else []), "stty", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)


def termios_raw(fd: int) -> None:
    termios_tty.setraw(fd)


def heard(device: object, event: tuple[object, ...]) -> bool:
    return wait_for(lambda: event in device.events)  # type: ignore[attr-defined]


# -- publishing -----------------------------------------------------------------------------------


def test_the_port_is_a_symlink_to_a_pty_slave_owned_and_moded_per_make_dev(loopback) -> None:
    _, _tty, path = loopback(uid=65534, gid=65534, mode=0o640)
    slave = os.readlink(path)
    assert slave.startswith("/dev/pts/")
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, 0o640)
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        assert os.isatty(fd)  # a real tty: the kernel's termios and n_tty
    finally:
        os.close(fd)


def test_the_link_goes_with_the_device(ptys, loopback) -> None:
    kernel, _ = ptys
    _, _, path = loopback()
    slave = os.readlink(path)
    kernel.kldunload("loopback")
    assert not os.path.lexists(path)
    assert not os.path.exists(slave)  # the master is closed: devpts took the slave away


# -- pyserial ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("baud", [1200, 9600, 115200, 250000])
def test_pyserial_at_several_speeds_talks_and_the_device_hears_the_speed(loopback, baud: int) -> None:
    device, _, path = loopback()
    with serial.Serial(path, baud, timeout=2) as port:
        port.write(b"at+cgmi\r\n")
        assert port.readline() == b"AT+CGMI\r\n"
    assert heard(device, ("param", f"{baud} 8N1")) or baud == 115200  # 115200 is the port's own speed
    assert ("received", b"at+cgmi\r\n") in device.events


def test_readline_with_a_timeout_returns_what_came(loopback) -> None:
    _, _, path = loopback()
    with serial.Serial(path, 115200, timeout=0.3) as port:
        assert port.readline() == b""  # nothing was sent: the timeout ends it
        port.write(b"no newline")
        assert port.readline() == b"NO NEWLINE"  # the timeout, with what arrived


def test_in_waiting_and_reset_input_buffer(loopback) -> None:
    _, _, path = loopback()
    with serial.Serial(path, 115200, timeout=1) as port:
        port.write(b"hello\n")
        assert wait_for(lambda: port.in_waiting == 6)
        port.reset_input_buffer()
        assert port.in_waiting == 0
        port.write(b"again\n")
        assert port.readline() == b"AGAIN\n"  # the port goes on after the flush


def test_exclusive_open_refuses_a_second_pyserial(loopback) -> None:
    _, _, path = loopback()
    with serial.Serial(path, 115200, exclusive=True), pytest.raises(serial.SerialException, match="lock"):
        serial.Serial(path, 115200, exclusive=True)


def test_tiocexcl_refuses_another_user(loopback) -> None:
    _, _, path = loopback()
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.ioctl(fd, TIOCEXCL)
        done = stty("-F", path, as_nobody=True)
        assert done.returncode != 0 and "Device or resource busy" in done.stderr
    finally:
        os.close(fd)


def test_modem_lines_are_enotty_on_a_pty_and_pyserial_opens_anyway(loopback) -> None:
    _, _, path = loopback()
    with serial.Serial(path, 115200, timeout=1) as port:  # its DTR/RTS ioctls fail, ignored
        with pytest.raises(OSError) as no_lines:
            port.cts  # noqa: B018
        assert no_lines.value.errno == errno.ENOTTY


# -- stty -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slow_open", [0.0, 0.3])
def test_stty_sets_the_speed_the_device_hears_even_when_it_closes_at_once(loopback, slow_open: float) -> None:
    device, _, path = loopback()
    device.slow_open = slow_open
    assert stty("-F", path, "4800", "raw", "-echo").returncode == 0
    assert heard(device, ("close",))
    assert ("param", "4800 8N1") in device.events[: device.events.index(("close",))]  # before its close
    assert "speed 4800 baud" in stty("-F", path).stdout  # termios persist across opens


def test_stty_by_another_user_follows_the_mode(loopback) -> None:
    _, _, path = loopback(mode=0o666)
    done = stty("-F", path, "19200", as_nobody=True)
    assert done.returncode == 0, done.stderr
    assert "speed 19200 baud" in stty("-F", path, as_nobody=True).stdout


def test_a_private_port_refuses_another_user(loopback) -> None:
    _, _, path = loopback(mode=0o600)
    done = stty("-F", path, as_nobody=True)
    assert done.returncode != 0 and "Permission denied" in done.stderr


def test_parity_and_character_size_do_not_cross_a_pty(loopback) -> None:
    device, _, path = loopback()
    done = stty("-F", path, "parenb", "cs7")
    # The kernel forces CS8 and clears PARENB; stty says so in its own words (EINVAL on 6.x).
    assert done.returncode != 0, done.stdout
    assert "unable to perform all requested operations" in done.stderr or "Invalid argument" in done.stderr
    assert not any(e[0] == "param" and "7E" in e[1] for e in device.events)


def test_a_speed_the_device_refuses_is_put_back(ptys, loopback) -> None:
    kernel, _ = ptys
    device, _, path = loopback()
    with serial.Serial(path, 12345, timeout=1):
        assert wait_for(lambda: any("refused by the device" in line for line in kernel.dmesg()))
        # Back on the line: the last settings the device accepted.  pyserial sets a custom
        # speed in two steps (B38400, then BOTHER 12345), so under load the transport may
        # have seen, and the device accepted, the placeholder 38400 in between.
        def put_back() -> bool:
            accepted = ["115200"] + [event[1].split()[0] for event in device.events if event[0] == "param"]
            return f"speed {accepted[-1]} baud" in stty("-F", path).stdout

        assert wait_for(put_back), stty("-F", path).stdout


# -- bytes, not lost -------------------------------------------------------------------------------


def test_opens_and_closes_reach_the_device_once_per_program(loopback) -> None:
    device, _, path = loopback()
    with serial.Serial(path, 115200), serial.Serial(path, 115200):
        assert heard(device, ("open",))
    assert heard(device, ("close",))
    assert [e for e in device.events if e[0] in ("open", "close")] == [("open",), ("close",)]


@pytest.mark.parametrize("slow_open", [0.0, 0.3])
def test_what_a_program_writes_just_before_it_closes_reaches_the_device(loopback, slow_open: float) -> None:
    device, _, path = loopback()
    device.slow_open = slow_open  # 0.3: the program has closed before the device has opened
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    termios_raw(fd)  # else n_tty maps CR to NL, and echoes the device's answer back to it
    os.write(fd, b"$PUBX,40,GLL,0,0*5C\r\nhalf a sen")
    os.close(fd)
    assert heard(device, ("close",))
    assert b"".join(e[1] for e in device.events if e[0] == "received") == b"$PUBX,40,GLL,0,0*5C\r\nhalf a sen"


def test_a_program_that_stops_reading_loses_nothing_the_device_sent(loopback) -> None:
    device, tty, path = loopback()
    with serial.Serial(path, 115200, timeout=2) as port:
        assert heard(device, ("open",))
        count = 30000  # 270 kB: far more than the pty and the tty queue hold
        device.flood(tty, count)
        assert wait_for(lambda: device.refused > 0)  # the program's queue is full, back to the device
        got = port.read(count * 9)
    assert got == b"".join(b"%08d\n" % i for i in range(count))


def test_a_flush_of_the_input_takes_what_waited_on_the_way_too(loopback) -> None:
    device, tty, path = loopback()
    with serial.Serial(path, 115200, timeout=1) as port:
        assert heard(device, ("open",))
        device.flood(tty, 30000)
        assert wait_for(lambda: device.refused > 0)  # the program's queue, the transport's and the tty's: full
        still = len(device.unsent)
        port.reset_input_buffer()
        after = b""
        while chunk := port.read(65536):
            after += chunk
    # What reaches the program after its flush is what the device had not sent yet,
    # give or take one pty buffer refilled in the moment: not the 64 KiB the tty held.
    assert len(after) < still + 32 * 1024


def test_a_program_on_the_pty_is_hung_up_when_the_device_goes(ptys, loopback) -> None:
    kernel, _ = ptys
    device, _, path = loopback()
    with serial.Serial(path, 115200, timeout=1) as port:
        assert heard(device, ("open",))  # the transport has seen the program's open
        with pytest.raises(OSError) as busy:
            kernel.kldunload("loopback")
        assert busy.value.errno == errno.EBUSY  # open, as a real port's driver would be
        kernel.kldunload("loopback", force=True)
        with pytest.raises(serial.SerialException):
            port.read(1)


# -- the examples over the pty ------------------------------------------------------------------------


@pytest.fixture
def examples(ptys: tuple[Kernel, PtyTransport]) -> tuple[Kernel, PtyTransport]:
    kernel, transport = ptys
    kernel.kldload(str(EXAMPLES / "gps.py"))
    kernel.kldload(str(EXAMPLES / "modem.py"))
    kernel.sysctl("dev.gps.0.utc", "2026-12-01T12:35:19")
    kernel.sysctl("dev.modem.0.dial_ms", 0)
    return kernel, transport


def nmea_lines(port: serial.Serial, count: int) -> list[pynmea2.NMEASentence]:
    """`count` whole sentences, parsed with their checksums checked (the first line read
    may be the tail of one: skipped)."""
    port.readline()
    return [pynmea2.parse(port.readline().decode("ascii").strip(), check=True) for _ in range(count)]


@pytest.mark.parametrize("baud", [4800, 9600, 115200])
def test_pyserial_reads_the_gps_at_each_of_its_speeds(examples, baud: int) -> None:
    _kernel, transport = examples
    with serial.Serial(transport.device_path("ttyGPS0"), baud, timeout=3) as port:
        kinds = {s.sentence_type for s in nmea_lines(port, 6)}
        assert {"RMC", "GGA", "GSA", "GSV"} <= kinds
        assert f"speed {baud} baud" in stty("-F", port.port).stdout


def test_the_gps_position_follows_the_sysctl_over_the_pty(examples) -> None:
    kernel, transport = examples
    with serial.Serial(transport.device_path("ttyGPS0"), 9600, timeout=3) as port:
        kernel.sysctl("dev.gps.0.latitude", -12.5)
        port.reset_input_buffer()
        assert port.in_waiting == 0
        assert wait_for(lambda: any(getattr(s, "lat_dir", "") == "S" for s in nmea_lines(port, 5)), timeout=8)


def test_stty_changes_the_gps_speed_and_head_reads_rmc_as_root_and_as_nobody(examples) -> None:
    _, transport = examples
    path = transport.device_path("ttyGPS0")
    for as_nobody in (False, True):
        assert stty("-F", path, "4800", "raw", "-echo", as_nobody=as_nobody).returncode == 0
        assert "speed 4800 baud" in stty("-F", path, as_nobody=as_nobody).stdout
        done = subprocess.run([*(AS_NOBODY.split() if as_nobody else []), "timeout", "5", "head", "-c", "300", path],
                              capture_output=True, timeout=20, check=False)
        assert b"$GPRMC," in done.stdout, done.stderr


def test_the_modem_answers_pyserial(examples) -> None:
    _, transport = examples
    with serial.Serial(transport.device_path("ttyACM0"), 115200, timeout=2) as port:
        port.write(b"ATE0\r")
        assert port.read_until(b"OK\r\n").endswith(b"OK\r\n")
        port.write(b"AT+CGMI\r")
        assert port.read_until(b"OK\r\n") == b"\r\npykld\r\n\r\nOK\r\n"
        port.write(b"ATD123\r")
        assert port.read_until(b"CONNECT 115200\r\n").endswith(b"CONNECT 115200\r\n")
        port.write(b"hello")
        assert port.read(5) == b"hello"


def test_the_modem_answers_a_shell_of_another_user(examples) -> None:
    _, transport = examples
    path = transport.device_path("ttyACM0")
    script = f"exec 3<>{path}; stty -F {path} raw -echo; printf 'AT\\r' >&3; timeout 3 head -c 9 <&3"
    done = subprocess.run([*AS_NOBODY.split(), "sh", "-c", script], capture_output=True, timeout=20, check=False)
    assert done.stdout == b"AT\r\r\nOK\r\n", done.stderr


def test_the_null_modem_carries_pyserial_both_ways(ptys) -> None:
    kernel, transport = ptys
    kernel.kldload(str(EXAMPLES / "nullmodem.py"))
    with serial.Serial(transport.device_path("ttyNULL0"), 115200, timeout=2) as a, \
            serial.Serial(transport.device_path("ttyNULL1"), 115200, timeout=2) as b:
        assert wait_for(lambda: all(end.tty.is_open for end in kernel.module("nullmodem").instance.cable.ends))
        # pyserial flushes its input as it opens.  The transport learns of a flush when it
        # reads the master, so one read late would also take bytes the peer sent after it
        # (a known limit, in the README): wait until it has read what each open left.
        masters = [port.master for port in transport.ports.values()]
        assert wait_for(lambda: not any(select.select(masters, [], [], 0)[0]))
        a.write(b"hello over the cable\n")
        assert b.readline() == b"hello over the cable\n"
        b.write(b"and back\n")
        assert a.readline() == b"and back\n"
