"""Waits that end on a signal and say so when they give up: destroy_dev's drain of
operations inside the driver, and the grace an unload gives closes on their way."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from pykld import Kernel
from pykld.kernel import devfs

Load = Callable[..., int]

STUCK = '''
import threading
from pykld import CharacterDevice, Module, make_dev

class Stuck(CharacterDevice):
    def __init__(self):
        self.inside = threading.Event()
        self.release = threading.Event()

    def read(self, file, uio):
        self.inside.set()
        self.release.wait(10)  # not sleep(): destroy cannot interrupt it

class Drv(Module):
    name = "drv"

    def load(self):
        self.stuck = Stuck()
        self.cdev = make_dev(self.stuck, "stuck", mode=0o666)
'''


def test_destroy_waits_for_an_operation_to_leave_the_driver(kernel: Kernel, load_driver: Load,
                                                            threads) -> None:
    load_driver(STUCK)
    stuck = kernel.module("drv").instance.stuck
    f = kernel.open("/dev/stuck")
    reader = threads.start(f.read)
    assert stuck.inside.wait(5)
    threading.Timer(0.05, stuck.release.set).start()
    kernel.kldunload("drv", force=True)
    assert not reader.thread.is_alive()  # the unload returned after the read left the driver
    assert not [line for line in kernel.dmesg() if "Still" in line]
    f.close()


def test_destroy_says_when_its_drain_gives_up(kernel: Kernel, load_driver: Load, threads,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devfs, "DRAIN_TIMEOUT", 0.05)
    load_driver(STUCK)
    stuck = kernel.module("drv").instance.stuck
    f = kernel.open("/dev/stuck")
    reader = threads.start(f.read)
    assert stuck.inside.wait(5)
    try:
        kernel.kldunload("drv", force=True)
        assert any("kernel: destroy_dev: Still 1 threads in /dev/stuck" in line for line in kernel.dmesg())
    finally:
        stuck.release.set()
        threads.join(reader)
        f.close()


def test_unload_waits_for_a_close_on_its_way(kernel: Kernel, example: Callable[[str], str]) -> None:
    """Over FUSE, RELEASE comes after close(2) returned: `cat dev; kldunload` must not
    be EBUSY because the close is a moment late."""
    kernel.kldload(example("hello"))
    f = kernel.open("/dev/rustmodule")
    threading.Timer(0.05, f.close).start()  # well within the unload's grace
    kernel.kldunload("hello")
    assert kernel.kldstat() == []


def test_an_unload_goes_on_at_the_close_not_at_the_end_of_its_grace(kernel: Kernel, example: Callable[[str], str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The close wakes the waiting unload: with a grace of a minute it still returns at once."""
    monkeypatch.setattr("pykld.kernel.kernel.CLOSE_GRACE", 60.0)
    kernel.kldload(example("hello"))
    f = kernel.open("/dev/rustmodule")
    unload = threading.Thread(target=kernel.kldunload, args=("hello",), daemon=True)
    unload.start()
    threading.Timer(0.05, f.close).start()
    unload.join(10)
    assert not unload.is_alive() and kernel.kldstat() == []


def test_an_open_the_driver_refuses_wakes_a_waiting_unload(kernel: Kernel, load_driver: Load,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed open takes its count back, and that wakes the unload waiting for it too."""
    monkeypatch.setattr("pykld.kernel.kernel.CLOSE_GRACE", 60.0)
    load_driver(REFUSING)
    entered = threading.Event()
    go_on = threading.Event()
    mod = kernel.module("refusing").instance
    mod.dev.entered, mod.dev.go_on = entered, go_on
    opener = threading.Thread(target=_open_refused, args=(kernel,), daemon=True)
    opener.start()
    assert entered.wait(5)
    unload = threading.Thread(target=kernel.kldunload, args=("refusing",), daemon=True)
    unload.start()
    threading.Timer(0.05, go_on.set).start()
    unload.join(10)
    assert not unload.is_alive() and kernel.kldstat() == []


def _open_refused(kernel: Kernel) -> None:
    with pytest.raises(OSError):
        kernel.open("/dev/refusing")


REFUSING = """
import errno
from pykld import CharacterDevice, Module, make_dev

class Refusing(CharacterDevice):
    def open(self, file):
        self.entered.set()
        self.go_on.wait(10)
        raise OSError(errno.EBUSY, "not today")

class Mod(Module):
    name = "refusing"

    def load(self):
        self.dev = Refusing()
        make_dev(self.dev, "refusing", mode=0o666)
"""
