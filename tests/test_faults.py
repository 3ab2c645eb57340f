"""Fault containment: a driver's exception costs its caller EIO, dmesg gets the traceback,
and everything else keeps being served; a driver's OSError passes its errno."""

from __future__ import annotations

import errno
import os
import textwrap
from collections.abc import Callable

import pytest

from pykld import _IOR, Kernel

Load = Callable[..., int]

# One module, two devices: "crashy" runs whatever a write told it to, "steady" just works.
CRASHY = '''
import errno
import sys
from pykld import CharacterDevice, Module, make_dev

ACTIONS = {
    "ok": lambda: None,
    "zerodiv": lambda: 1 / 0,
    "exit": lambda: sys.exit(3),
    "eperm": lambda: (_ for _ in ()).throw(OSError(errno.EPERM, "not allowed")),
    "bare_oserror": lambda: (_ for _ in ()).throw(OSError("no errno here")),
    "negative_errno": lambda: (_ for _ in ()).throw(OSError(-5, "nonsense errno")),
    "permission": lambda: (_ for _ in ()).throw(PermissionError()),
}

class Crashy(CharacterDevice):
    def __init__(self):
        self.action = "ok"

    def act(self):
        ACTIONS[self.action]()

    def open(self, file):
        if file.flags & 0o100000000:  # a private flag bit: crash in open
            self.act()

    def read(self, file, uio):
        self.act()
        uio.move_out(b"fine")

    def write(self, file, uio):
        self.action = uio.move_in().decode()

    def ioctl(self, file, cmd, data):
        if cmd == 1:
            return "not an int"
        if cmd == 2:
            return None
        if cmd == 3:
            return 42
        self.act()
        return 0

    def poll(self, file, events):
        if self.action == "poll_str":
            return "ready"
        self.act()
        return events

    def close(self, file):
        if self.action == "close_crash":
            raise RuntimeError("crash in close")

class Steady(CharacterDevice):
    def read(self, file, uio):
        uio.move_out(b"steady")

class Drv(Module):
    name = "drv"

    def load(self):
        make_dev(Crashy(), "crashy", mode=0o666)
        make_dev(Steady(), "steady", mode=0o666)
'''


@pytest.fixture
def crashy(kernel: Kernel, load_driver: Load) -> Kernel:
    load_driver(CRASHY)
    return kernel


def set_action(kernel: Kernel, action: str) -> None:
    with kernel.open("/dev/crashy", os.O_WRONLY) as f:
        f.write(action.encode())


def read_errno(kernel: Kernel, path: str = "/dev/crashy") -> int | None:
    with kernel.open(path) as f, pytest.raises(OSError) as excinfo:
        f.read()
    return excinfo.value.errno


def read(kernel: Kernel, path: str = "/dev/crashy") -> bytes:
    with kernel.open(path) as f:
        return f.read()


def test_exception_is_eio_with_traceback_and_next_caller_served(crashy: Kernel) -> None:
    set_action(crashy, "zerodiv")
    assert read_errno(crashy) == errno.EIO
    log = "\n".join(crashy.dmesg())
    assert "drv: fault in read on /dev/crashy: ZeroDivisionError" in log
    assert "Traceback (most recent call last):" in log
    assert "1 / 0" in log  # the driver's own line is in the traceback
    # The device lock was released: the same device serves the next caller ...
    set_action(crashy, "ok")
    assert read(crashy) == b"fine"
    # ... and the other device was never affected.
    assert read(crashy, "/dev/steady") == b"steady"


def test_fault_repeats_for_every_caller_without_wedging(crashy: Kernel) -> None:
    set_action(crashy, "zerodiv")
    for _ in range(5):
        assert read_errno(crashy) == errno.EIO
    assert read(crashy, "/dev/steady") == b"steady"
    assert crashy.lookup("/dev/crashy").stats.faults == 5


def test_sys_exit_in_a_driver_is_eio(crashy: Kernel) -> None:
    set_action(crashy, "exit")
    assert read_errno(crashy) == errno.EIO  # and we are still here to check it
    assert "SystemExit" in "\n".join(crashy.dmesg())
    assert read(crashy, "/dev/steady") == b"steady"


@pytest.mark.parametrize(
    ("action", "expected"),
    [("eperm", errno.EPERM), ("bare_oserror", errno.EIO), ("negative_errno", errno.EIO),
     ("permission", errno.EIO)],
)
def test_driver_oserror_passes_its_errno(crashy: Kernel, action: str, expected: int) -> None:
    set_action(crashy, action)
    assert read_errno(crashy) == expected
    stats = crashy.lookup("/dev/crashy").stats
    assert (stats.errors, stats.faults) == (1, 0)  # an error the driver chose, not a crash
    assert "Traceback" not in "\n".join(crashy.dmesg())


def test_ioctl_results(crashy: Kernel) -> None:
    with crashy.open("/dev/crashy") as f:
        with pytest.raises(OSError) as excinfo:
            f.ioctl(1)
        assert excinfo.value.errno == errno.EIO
        assert f.ioctl(2).result == 0  # None is success
        assert f.ioctl(3).result == 42
    assert "returned 'not an int'" in "\n".join(crashy.dmesg())


def test_ioctl_crash_is_eio(crashy: Kernel) -> None:
    set_action(crashy, "zerodiv")
    with crashy.open("/dev/crashy") as f, pytest.raises(OSError) as excinfo:
        f.ioctl(_IOR("Q", 1, 16))
    assert excinfo.value.errno == errno.EIO


def test_poll_crash_and_bad_result_are_eio(crashy: Kernel) -> None:
    with crashy.open("/dev/crashy", os.O_RDWR) as f:
        f.write(b"zerodiv")
        with pytest.raises(OSError) as excinfo:
            f.poll(0x1)
        assert excinfo.value.errno == errno.EIO
        f.write(b"poll_str")
        with pytest.raises(OSError) as excinfo:
            f.poll(0x1)
        assert excinfo.value.errno == errno.EIO


def test_crash_in_open_refuses_the_open_and_leaks_no_ref(crashy: Kernel) -> None:
    set_action(crashy, "zerodiv")
    with pytest.raises(OSError) as excinfo:
        crashy.open("/dev/crashy", os.O_RDONLY | 0o100000000)
    assert excinfo.value.errno == errno.EIO
    assert crashy.kldstat()[0].refs == 0
    crashy.kldunload("drv")  # not EBUSY: the failed open holds nothing


def test_crash_in_close_still_closes(crashy: Kernel) -> None:
    f = crashy.open("/dev/crashy", os.O_WRONLY)
    f.write(b"close_crash")
    with pytest.raises(OSError) as excinfo:
        f.close()
    assert excinfo.value.errno == errno.EIO
    assert f.closed
    assert crashy.kldstat()[0].refs == 0
    crashy.kldunload("drv")


def test_stats_counters_move(crashy: Kernel) -> None:
    cdev = crashy.lookup("/dev/crashy")
    with crashy.open("/dev/crashy", os.O_RDWR) as f:
        assert f.read(2) == b"fi"
        assert f.read(100) == b"ne"
        assert f.read(100) == b""
        f.write(b"zerodiv")
        with pytest.raises(OSError):
            f.read()
        f.write(b"eperm")
        with pytest.raises(OSError):
            f.read()
        f.ioctl(3)
        f.write(b"ok")
        f.poll(0x1)
    s = cdev.stats
    assert (s.opens, s.reads, s.bytes_read) == (1, 3, 4)
    assert (s.writes, s.bytes_written) == (3, len(b"zerodiv") + len(b"eperm") + len(b"ok"))
    assert (s.faults, s.errors, s.ioctls, s.polls) == (1, 1, 1, 1)


def test_host_keeps_serving_other_modules(crashy: Kernel, example: Callable[[str], str]) -> None:
    crashy.kldload(example("hello"))
    set_action(crashy, "zerodiv")
    for _ in range(3):
        assert read_errno(crashy) == errno.EIO
        assert read(crashy, "/dev/rustmodule") == b"Default hello message\n"


GARBAGE = textwrap.dedent("""
    from pykld import CharacterDevice, Module, make_dev
    class Garbage(CharacterDevice):
        def read(self, file, uio):
            return 42
        def write(self, file, uio):
            return object()
    class Drv(Module):
        name = "garbage"
        def load(self):
            make_dev(Garbage(), "garbage", mode=0o666)
""")


def test_read_or_write_returning_garbage_is_eio_not_eof(kernel: Kernel, load_driver: Load) -> None:
    """A read that returned 42 looked like EOF, and a write that returned an object like a
    write of 0 bytes, which a caller's write loop retries for ever."""
    load_driver(GARBAGE, "garbage")
    with kernel.open("/dev/garbage", os.O_RDWR) as f:
        for call in (lambda: f.read(10), lambda: f.write(b"x")):
            with pytest.raises(OSError) as excinfo:
                call()
            assert excinfo.value.errno == errno.EIO
    assert any("returned 42, not None" in line.text for line in kernel.msgbuf.since(0)[1])
