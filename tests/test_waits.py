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
