"""sleep/wakeup and selrecord/selwakeup: locks released while asleep, timeouts, one or all
woken, O_NONBLOCK, interrupts, and poll callers woken by a driver's selwakeup."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable

import pytest

from pykld import POLLIN, POLLOUT, Kernel
from pykld.kernel.devfs import Cdev
from pykld.kernel.sched import Thread

Load = Callable[..., int]

SLEEPER = '''
import contextlib
import threading
from pykld import CharacterDevice, Module, SelInfo, make_dev, selrecord, selwakeup, sleep, wakeup, wakeup_one

class Sleeper(CharacterDevice):
    serialized = SERIALIZED

    def __init__(self):
        self.ready = False
        self.lock = threading.Lock()
        self.sel = SelInfo()
        self.asleep = 0  # callers sleeping in ioctl SLEEP_MS, so tests know when to wake them

    def own_lock(self):
        return contextlib.nullcontext() if self.serialized else self.lock

    def read(self, file, uio):
        # Waits for a write; holds the device lock (or self.lock) except while asleep.
        if not self.serialized:
            self.lock.acquire()
        try:
            while not self.ready:
                sleep(self, lock=None if self.serialized else self.lock)
            self.ready = False
            uio.uiomove(b"woken")
        finally:
            if not self.serialized:
                self.lock.release()

    def write(self, file, uio):
        uio.move_in()
        self.ready = True
        wakeup(self)
        selwakeup(self.sel)

    def ioctl(self, file, cmd, data):
        with self.own_lock():
            if cmd == 1:  # sleep with a timeout: 1 when woken, 0 when it expired
                self.asleep += 1
                try:
                    return int(sleep("chan", timeout=data / 1000, lock=None if self.serialized else self.lock))
                finally:
                    self.asleep -= 1
            if cmd == 2:
                return wakeup_one("chan")
            if cmd == 3:
                return wakeup("chan")
            if cmd == 4:
                return self.asleep
        return super().ioctl(file, cmd, data)

    def poll(self, file, events):
        if self.ready:
            return events & 0x1
        selrecord(self.sel)
        return 0

class Drv(Module):
    name = "drv"

    def load(self):
        self.cdev = make_dev(Sleeper(), "sleeper", mode=0o666)
'''

DEV = "/dev/sleeper"
SLEEP_MS, WAKEUP_ONE, WAKEUP_ALL, ASLEEP = 1, 2, 3, 4


@pytest.fixture(params=[True, False], ids=["serialized", "own-lock"])
def sleeper(request: pytest.FixtureRequest, kernel: Kernel, load_driver: Load) -> Kernel:
    load_driver(SLEEPER.replace("SERIALIZED", str(request.param)))
    return kernel


def active(kernel: Kernel, count: int) -> Callable[[], bool]:
    return lambda: len(kernel.lookup(DEV).active) >= count


def test_sleep_releases_the_lock_for_a_writer(sleeper: Kernel, threads, wait_until) -> None:
    reader = sleeper.open(DEV)
    got = threads.start(reader.read)
    wait_until(active(sleeper, 1))
    time.sleep(0.02)
    assert got.thread.is_alive()
    with sleeper.open(DEV, os.O_WRONLY) as writer:
        writer.write(b"go")  # would deadlock if the sleeper still held the lock
    threads.join(got)
    assert got.result() == b"woken"
    reader.close()


def test_sleep_timeout_returns_false(sleeper: Kernel) -> None:
    with sleeper.open(DEV) as f:
        start = time.monotonic()
        assert f.ioctl(SLEEP_MS, 50).result == 0
        assert 0.04 <= time.monotonic() - start < 2


def test_wakeup_one_wakes_one_sleeper(sleeper: Kernel, threads, wait_until) -> None:
    files = [sleeper.open(DEV) for _ in range(3)]
    sleepers = [threads.start(lambda f=f: f.ioctl(SLEEP_MS, 4000).result) for f in files[:2]]
    wait_until(lambda: files[2].ioctl(ASLEEP).result == 2)
    assert files[2].ioctl(WAKEUP_ONE).result == 1
    wait_until(lambda: sum(not s.thread.is_alive() for s in sleepers) == 1)
    time.sleep(0.05)
    assert sum(s.thread.is_alive() for s in sleepers) == 1  # exactly one woke
    assert files[2].ioctl(WAKEUP_ALL).result == 1  # the other one is still asleep
    threads.join(*sleepers)
    assert sorted(s.result() for s in sleepers) == [1, 1]  # both were woken, neither timed out
    assert files[2].ioctl(WAKEUP_ONE).result == 0  # nobody left
    for f in files:
        f.close()


def test_wakeup_wakes_all(sleeper: Kernel, threads, wait_until) -> None:
    files = [sleeper.open(DEV) for _ in range(4)]
    sleepers = [threads.start(lambda f=f: f.ioctl(SLEEP_MS, 4000).result) for f in files[:3]]
    wait_until(lambda: files[3].ioctl(ASLEEP).result == 3)
    assert files[3].ioctl(WAKEUP_ALL).result == 3
    threads.join(*sleepers)
    assert [s.result() for s in sleepers] == [1, 1, 1]
    for f in files:
        f.close()


def test_nonblocking_sleep_is_eagain(sleeper: Kernel) -> None:
    with sleeper.open(DEV, os.O_RDONLY | os.O_NONBLOCK) as f:
        start = time.monotonic()
        with pytest.raises(OSError) as excinfo:
            f.read()
        assert excinfo.value.errno == errno.EAGAIN
        with pytest.raises(OSError) as excinfo:
            f.ioctl(SLEEP_MS, 1000)
        assert excinfo.value.errno == errno.EAGAIN
        assert time.monotonic() - start < 0.5  # at once, not after the timeout


def test_interrupted_sleeper_gets_eintr(sleeper: Kernel, threads, wait_until) -> None:
    # What a transport does for a signal to a blocked caller (FUSE_INTERRUPT).
    file = sleeper.open_cdev(DEV)
    td = Thread()
    got = threads.start(lambda: file.read(0, 100, td=td))
    wait_until(active(sleeper, 1))
    time.sleep(0.02)
    td.interrupt()
    threads.join(got)
    assert isinstance(got.error, OSError) and got.error.errno == errno.EINTR
    # The lock came back: the device still works.
    with sleeper.open(DEV, os.O_RDWR) as f:
        f.write(b"x")
        assert f.read() == b"woken"
    file.close()


def test_interrupt_before_sleeping_ends_the_sleep_at_once(sleeper: Kernel) -> None:
    file = sleeper.open_cdev(DEV)
    td = Thread()
    td.interrupt(errno.EINTR)
    start = time.monotonic()
    with pytest.raises(OSError) as excinfo:
        file.ioctl(SLEEP_MS, 2000, td=td)
    assert excinfo.value.errno == errno.EINTR
    assert time.monotonic() - start < 1
    file.close()


def test_forced_destroy_wakes_sleeper_with_enxio(sleeper: Kernel, threads, wait_until) -> None:
    f = sleeper.open(DEV)
    got = threads.start(lambda: f.ioctl(SLEEP_MS, 4000))
    wait_until(active(sleeper, 1))
    sleeper.kldunload("drv", force=True)
    threads.join(got)
    assert isinstance(got.error, OSError) and got.error.errno == errno.ENXIO
    f.close()


def destroy_when_joining(cdev: Cdev) -> None:
    """Make the device be destroyed just as the next operation registers itself as active:
    after its "destroyed?" check, before destroy() could see it to interrupt it."""

    class RacingSet(set):  # type: ignore[type-arg]
        def add(self, td: object) -> None:
            cdev.destroy()
            super().add(td)

    cdev.active = RacingSet()


def test_destroy_racing_an_operation_start_cannot_strand_it(sleeper: Kernel, threads) -> None:
    # The device is destroyed after an operation passed the "destroyed?" check but before
    # it was registered as active: destroy() cannot interrupt it, so it must not sleep.
    f = sleeper.open(DEV)
    destroy_when_joining(sleeper.lookup(DEV))
    got = threads.start(f.read)
    threads.join(got)
    assert isinstance(got.error, OSError) and got.error.errno == errno.ENXIO
    f.close()


def test_close_racing_a_destroy_still_succeeds(sleeper: Kernel) -> None:
    f = sleeper.open(DEV)
    cdev = sleeper.lookup(DEV)
    destroy_when_joining(cdev)
    f.close()
    assert f.closed
    assert cdev.open_count == 0


def test_poll_woken_by_selwakeup(sleeper: Kernel, threads) -> None:
    pollers = [sleeper.open(DEV) for _ in range(2)]
    assert pollers[0].poll(POLLIN) == 0
    waits = [threads.start(lambda p=p: p.poll(POLLIN, timeout=4)) for p in pollers]
    time.sleep(0.05)
    start = time.monotonic()
    with sleeper.open(DEV, os.O_WRONLY) as writer:
        writer.write(b"ready")
    threads.join(*waits)
    assert [w.result() for w in waits] == [POLLIN, POLLIN]  # both pollers woken
    assert time.monotonic() - start < 2
    for p in pollers:
        p.close()


def test_poll_without_readiness_times_out(sleeper: Kernel) -> None:
    with sleeper.open(DEV) as f:
        start = time.monotonic()
        assert f.poll(POLLIN | POLLOUT, timeout=0.05) == 0
        assert time.monotonic() - start >= 0.04
