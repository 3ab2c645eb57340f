"""modem: the Hayes AT dialogue, as a program on its port sees it, in process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

from pykld import Kernel
from pykld.kernel.fd import SimFile

DEV = "/dev/ttyACM0"
OK, ERROR = b"\r\nOK\r\n", b"\r\nERROR\r\n"


@pytest.fixture
def modem(kernel: Kernel, example: Callable[[str], str]) -> Kernel:
    kernel.kldload(example("modem"))
    kernel.sysctl("dev.modem.0.dial_ms", 0)
    kernel.sysctl("dev.modem.0.guard_ms", 200)
    return kernel


@pytest.fixture
def port(modem: Kernel) -> Iterator[SimFile]:
    with modem.open(DEV, os.O_RDWR) as f:
        yield f


def until(f: SimFile, end: bytes) -> bytes:
    got = b""
    while not got.endswith(end):
        got += f.read(1)
    return got


def quiet(f: SimFile, seconds: float = 0.3) -> bytes:
    """What the modem says within `seconds` (nothing, for a line it ignores)."""
    f.set_blocking(False)
    time.sleep(seconds)
    try:
        return f.read(4096)
    except BlockingIOError:
        return b""
    finally:
        f.set_blocking(True)


def command(f: SimFile, line: bytes, end: bytes = OK) -> bytes:
    f.write(line)
    return until(f, end)


def test_at_is_ok_and_echo_follows_e0_e1(port: SimFile) -> None:
    assert command(port, b"AT\r") == b"AT\r" + OK  # E1 by default: the line comes back first
    assert command(port, b"ATE0\r") == b"ATE0\r" + OK
    assert command(port, b"AT\r") == OK
    assert command(port, b"ATE1\r") == OK
    assert command(port, b"at\n") == b"at\n" + OK  # LF ends a line too, lower case is AT


def test_identification(port: SimFile) -> None:
    command(port, b"ATE0\r")
    assert command(port, b"ATI\r") == b"\r\npykld virtual modem\r\n\r\npykld 1.0\r\n" + OK
    assert command(port, b"AT+CGMI\r") == b"\r\npykld\r\n" + OK
    assert command(port, b"AT+CSQ\r") == b"\r\n+CSQ: 20,99\r\n" + OK
    assert command(port, b"ATE0I\r").startswith(b"\r\npykld virtual modem")  # commands in one line


@pytest.mark.parametrize("garbage", [b"ATE7\r", b"AT#$%\r", b"AT+FOO\r", b"AT&\r", b"ATH9\r"])
def test_garbage_commands_are_error(port: SimFile, garbage: bytes) -> None:
    command(port, b"ATE0\r")
    assert command(port, garbage, ERROR) == ERROR
    assert command(port, b"AT\r") == OK  # and the modem goes on


def test_lines_without_at_are_ignored_and_an_overlong_line_is_error(port: SimFile) -> None:
    command(port, b"ATE0\r")
    port.write(b"hello modem\r")
    assert quiet(port) == b""
    assert command(port, b"AT" + b"E" * 300 + b"\r", ERROR) == ERROR
    assert command(port, b"xxAT\r") == OK  # what comes before AT is ignored


def test_dial_connect_data_escape_and_hang_up(modem: Kernel, port: SimFile) -> None:
    tty = modem.module("modem").instance.modem.tty
    command(port, b"ATE0\r")
    assert command(port, b"ATD5551234\r", b"\r\n") + until(port, b"\r\n") == b"\r\nCONNECT 115200\r\n"
    assert tty.signals["cd"] and modem.sysctl("dev.modem.0.connected")
    port.write(b"ping+")
    assert until(port, b"ping+") == b"ping+"  # online: the far end echoes
    time.sleep(0.3)  # guard time of silence
    port.write(b"+++")
    assert until(port, OK) == OK  # and another guard time: command mode
    assert tty.signals["cd"]  # still connected
    assert command(port, b"ATO\r", b"CONNECT\r\n") == b"\r\nCONNECT\r\n"
    time.sleep(0.3)
    port.write(b"+++")
    until(port, OK)
    assert command(port, b"ATH\r") == OK
    assert not tty.signals["cd"] and not modem.sysctl("dev.modem.0.connected")


def test_plus_signs_inside_data_are_data(port: SimFile) -> None:
    command(port, b"ATE0\r")
    command(port, b"ATD1\r", b"CONNECT 115200\r\n")
    port.write(b"a+++b")  # no guard time before them
    assert until(port, b"b") == b"a+++b"
    port.write(b"c+++")  # nor here, though silence follows
    time.sleep(0.4)
    assert quiet(port) == b"c+++"  # data, not an escape: no OK


def test_no_answer_is_no_carrier(modem: Kernel, port: SimFile) -> None:
    modem.sysctl("dev.modem.0.answer", False)
    command(port, b"ATE0\r")
    assert command(port, b"ATD1\r", b"NO CARRIER\r\n") == b"\r\nNO CARRIER\r\n"
    assert command(port, b"ATO\r", b"NO CARRIER\r\n") == b"\r\nNO CARRIER\r\n"
    assert command(port, b"ATD\r", ERROR) == ERROR  # no number


def test_closing_the_port_drops_dtr_and_hangs_up(modem: Kernel) -> None:
    with modem.open(DEV, os.O_RDWR) as f:
        command(f, b"ATD1\r", b"CONNECT 115200\r\n")
        assert modem.sysctl("dev.modem.0.connected")
    assert not modem.sysctl("dev.modem.0.connected")  # &D2


def test_ring(modem: Kernel, port: SimFile) -> None:
    modem.sysctl("dev.modem.0.ring", True)
    assert until(port, b"RING\r\n") == b"\r\nRING\r\n"
