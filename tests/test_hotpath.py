"""What the request path binds once, at open or per OS thread, still follows what changes after.

An in-process open reuses its kernel Thread from one operation to the next (FreeBSD reuses a
thread's struct thread from one system call to the next), curthread lives in a per-OS-thread
seat, and SimFile decides its access checks at open.  These tests pin what must not leak or
freeze through that: O_NONBLOCK changed by fcntl after open, an interrupt, the caller's memory
or a poller of one operation reaching the next, two operations at once sharing a Thread,
curthread seen from another thread, fail(9) rules set after open, destroy_dev of a sleeping
reader, and a driver's crash in the middle of a read.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest

from pykld import Kernel
from pykld.kernel.fd import SimMemory
from pykld.kernel.sched import curthread, wakeup

DEV = "/dev/binder"
Load = Callable[..., int]

BINDER = '''
from pykld import CharacterDevice, Module, SelInfo, copyin, make_dev, selrecord, sleep, wakeup
from pykld.kernel.sched import curthread


class Binder(CharacterDevice):
    serialized = SERIALIZED

    def __init__(self):
        self.threads = []  # curthread of every operation, in order
        self.mode = "nap"
        self.addr = 0
        self.sel = SelInfo()
        self.inside = 0

    def read(self, file, uio):
        self.threads.append(curthread())
        mode = self.mode
        if mode == "nap":  # a short sleep: EAGAIN for O_NONBLOCK, EINTR when interrupted
            sleep(self, timeout=0.01)
            uio.move_out(b"slept")
        elif mode == "wait":  # until woken
            self.inside += 1
            try:
                sleep(self)
            finally:
                self.inside -= 1
            uio.move_out(b"woken")
        elif mode == "copyin":  # reach the caller's memory, if this operation has it
            uio.move_out(copyin(self.addr, 4))
        elif mode == "selrecord":  # as a read that found nothing and wants selwakeup
            selrecord(self.sel)
            uio.move_out(b"recorded")
        elif mode == "crash":
            uio.move_out(b"par")
            raise TypeError("the driver's own bug, halfway through a read")

    def ioctl(self, file, cmd, data):
        self.threads.append(curthread())
        return int.from_bytes(copyin(data, 4), "little")

    def poll(self, file, events):
        self.threads.append(curthread())
        return 0  # nothing ready, and no selrecord: only a later selrecord could record a poller


class BinderModule(Module):
    name = "binder"

    def load(self):
        self.device = Binder()
        self.cdev = make_dev(self.device, "binder", mode=0o666)

    def unload(self):
        self.cdev.destroy()
'''


@pytest.fixture(params=[True, False], ids=["serialized", "self-locking"])
def binder(request: pytest.FixtureRequest, kernel: Kernel, load_driver: Load) -> Kernel:
    load_driver(BINDER.replace("SERIALIZED", str(request.param)), "binder")
    return kernel


def device(kernel: Kernel):  # type: ignore[no-untyped-def]
    return kernel.lookup(DEV).device


def read_errno(f, size: int = 16) -> int | None:  # type: ignore[no-untyped-def]
    try:
        f.pread(size, 0)
    except OSError as exc:
        return exc.errno
    return None


def test_o_nonblock_set_and_cleared_by_fcntl_after_open_is_seen(binder: Kernel) -> None:
    with binder.open(DEV, os.O_RDONLY | os.O_NONBLOCK) as f:
        assert read_errno(f) == errno.EAGAIN
        f.set_blocking(True)
        assert f.pread(16, 0) == b"slept"
        f.set_blocking(False)
        assert read_errno(f) == errno.EAGAIN
        f.set_blocking(True)
        assert f.pread(16, 0) == b"slept"


def test_o_nonblock_passed_with_a_request_is_seen(binder: Kernel) -> None:
    # What a transport does: the caller's current flags come with each READ.
    file = binder.open_cdev(DEV)
    assert file.read(0, 16, os.O_RDONLY).tobytes() == b"slept"
    with pytest.raises(BlockingIOError):
        file.read(0, 16, os.O_RDONLY | os.O_NONBLOCK)
    assert file.read(0, 16, os.O_RDONLY).tobytes() == b"slept"
    file.close()


def test_an_interrupt_of_a_finished_operation_does_not_end_the_next(binder: Kernel) -> None:
    with binder.open(DEV) as f:
        assert f.pread(16, 0) == b"slept"
        device(binder).threads[-1].interrupt(errno.EINTR)  # too late: that read is over
        assert f.pread(16, 0) == b"slept"


def test_the_callers_memory_of_an_ioctl_is_not_a_later_reads(binder: Kernel) -> None:
    memory = SimMemory()
    addr = memory.alloc(b"\x07\x00\x00\x00")
    with binder.open(DEV) as f:
        assert f.ioctl(0x1234, addr, memory=memory).result == 7
        dev = device(binder)
        dev.mode, dev.addr = "copyin", addr
        assert read_errno(f) == errno.EOPNOTSUPP  # an in-process read brings no caller memory


def test_the_poller_of_a_poll_is_not_recorded_by_a_later_read(binder: Kernel) -> None:
    class Poller:
        woken = 0

        def notify(self) -> None:
            self.woken += 1

    poller = Poller()
    file = binder.open_cdev(DEV)
    assert file.poll(0x1, poller) == 0
    dev = device(binder)
    dev.mode = "selrecord"
    assert file.read(0, 16).tobytes() == b"recorded"
    dev.sel.wake()
    assert poller.woken == 0
    file.close()


def test_operations_at_once_on_one_open_have_threads_of_their_own(binder: Kernel, threads, wait_until) -> None:
    dev = device(binder)
    with binder.open(DEV) as f:
        assert f.pread(16, 0) == b"slept"  # the open's Thread, free again for the next read
        dev.mode = "wait"
        first = threads.start(lambda: f.pread(16, 0))
        wait_until(lambda: dev.inside == 1)
        second = threads.start(lambda: f.pread(16, 0))
        wait_until(lambda: dev.inside == 2)  # asleep, both (sleep drops the device lock)
        assert dev.threads[1] is dev.threads[0] and dev.threads[2] is not dev.threads[1]
        dev.threads[1].interrupt(errno.EINTR)  # a signal to the first caller
        threads.join(first)
        assert isinstance(first.error, OSError) and first.error.errno == errno.EINTR
        assert second.thread.is_alive()  # the signal was the first caller's only
        wakeup(dev)
        threads.join(second)
        assert second.value == b"woken"


def test_curthread_is_the_operations_in_its_own_thread_only(binder: Kernel, threads, wait_until) -> None:
    dev = device(binder)
    dev.mode = "wait"
    with binder.open(DEV) as f:
        reader = threads.start(lambda: f.pread(16, 0))
        wait_until(lambda: dev.inside == 1)
        assert curthread() is None  # this thread runs no operation, whatever another does
        wakeup(dev)
        threads.join(reader)
        assert reader.value == b"woken"
    assert curthread() is None


def test_a_fail_rule_set_after_open_fires(binder: Kernel) -> None:
    with binder.open(DEV) as f:
        assert f.pread(16, 0) == b"slept"
        rule = binder.fail("binder", "read", "error", errno.EIO, times=1)
        assert read_errno(f) == errno.EIO
        assert f.pread(16, 0) == b"slept"
        assert rule.fired == 1
        binder.fail("binder", "read", "short", 2)
        assert f.pread(16, 0) == b"sl"
        binder.fail_clear("binder")
        assert f.pread(16, 0) == b"slept"


def test_destroy_dev_ends_a_sleeping_in_process_read(binder: Kernel, threads, wait_until) -> None:
    dev = device(binder)
    f = binder.open(DEV)
    assert f.pread(16, 0) == b"slept"  # the open's Thread exists now, and the next read reuses it
    dev.mode = "wait"
    reader = threads.start(lambda: f.pread(16, 0))
    wait_until(lambda: dev.inside == 1)
    binder.lookup(DEV).destroy()  # returns once the reader has left the driver
    assert dev.inside == 0
    threads.join(reader)
    assert isinstance(reader.error, OSError) and reader.error.errno == errno.ENXIO
    assert read_errno(f) == errno.ENXIO
    f.close()


def test_a_driver_crash_mid_read_is_eio_and_a_dmesg_traceback_and_the_next_read_works(binder: Kernel) -> None:
    cdev = binder.lookup(DEV)
    dev = device(binder)
    with binder.open(DEV) as f:
        assert f.pread(16, 0) == b"slept"
        dev.mode = "crash"
        assert read_errno(f) == errno.EIO
        log = "\n".join(binder.dmesg())
        assert "fault in read on /dev/binder" in log and "TypeError: the driver's own bug" in log
        dev.mode = "nap"
        assert f.pread(16, 0) == b"slept"
        assert dev.threads[-1] is dev.threads[0]  # the open's Thread, reused after the crash too
        assert dev.threads[-1].kernel is binder and dev.threads[-1].module.name == "binder"
    assert (cdev.stats.reads, cdev.stats.faults, cdev.stats.bytes_read) == (2, 1, 10)


def test_pread_and_pwrite_keep_the_descriptors_errors(binder: Kernel, example: Callable[[str], str]) -> None:
    # SimFile decides at open what the access mode and the device allow; the errnos stay.
    with binder.open(DEV, os.O_WRONLY) as f:
        assert read_errno(f) == errno.EBADF
    with binder.open(DEV, os.O_RDONLY) as f:
        with pytest.raises(OSError) as excinfo:
            f.pwrite(b"x", 0)
        assert excinfo.value.errno == errno.EBADF
        with pytest.raises(OSError) as excinfo:
            f.pread(-1, 0)
        assert excinfo.value.errno == errno.EINVAL
        with pytest.raises(OSError) as excinfo:
            f.pread(1, -1)
        assert excinfo.value.errno == errno.EINVAL
    f.close()
    assert read_errno(f) == errno.EBADF
    binder.kldload(example("fifo"))
    stream = next(c for c in binder.devfs if not c.seekable)
    with binder.open(stream.path, os.O_RDWR | os.O_NONBLOCK) as f:
        assert read_errno(f) == errno.ESPIPE
        with pytest.raises(OSError) as excinfo:
            f.pwrite(b"x", 0)
        assert excinfo.value.errno == errno.ESPIPE


def test_a_dmesg_follower_is_woken_by_a_write(binder: Kernel, threads, wait_until) -> None:
    # Writes notify only while someone follows (a printf per request stays cheap): the
    # follower must still be woken, not left to its timeout.
    seq, _ = binder.msgbuf.since(0)
    follower = threads.start(lambda: binder.msgbuf.since(seq, timeout=60))
    wait_until(lambda: binder.msgbuf._followers == 1)  # noqa: SLF001 - until it waits
    binder.printf("binder", "one line\nand another")
    threads.join(follower)  # a hang (the 60 s timeout) fails here after 5 s
    new_seq, lines = follower.result()  # type: ignore[misc]
    assert new_seq == seq + 2 and [line.text for line in lines] == ["one line", "and another"]


def test_a_write_taken_in_parts_moves_each_byte_once() -> None:
    # move_into's shortcut (the whole write at once, no slice) only when nothing was taken before.
    from pykld.kernel.uio import Uio

    uio = Uio.for_write(0, b"headbody")
    assert uio.move_in(4) == b"head"
    buf = bytearray(8)
    assert uio.move_into(buf, 0) == 4
    assert bytes(buf[:4]) == b"body" and uio.resid == 0 and uio.offset == 8
    whole = Uio.for_write(3, memoryview(b"abc"))
    assert whole.move_into(buf, 2) == 3 and bytes(buf[2:5]) == b"abc" and whole.offset == 6


COUNTER = '''
import time
from pykld import CharacterDevice, Module, make_dev


class Tally(CharacterDevice):
    def __init__(self):
        self.value = 0
        self.inside = 0
        self.most = 0  # the most operations ever inside at once

    def write(self, file, uio):
        uio.move_in()
        self.inside += 1
        self.most = max(self.most, self.inside)
        value = self.value
        time.sleep(0)  # another thread runs here: only the device lock keeps this step whole
        self.value = value + 1
        self.inside -= 1


class TallyModule(Module):
    name = "tally"

    def load(self):
        self.cdev = make_dev(Tally(), "tally", mode=0o666)

    def unload(self):
        self.cdev.destroy()
'''


def test_the_device_lock_serialises_contended_operations_and_wakes_every_waiter(
        kernel: Kernel, load_driver: Load, threads) -> None:
    load_driver(COUNTER, "tally")
    tally = kernel.lookup("/dev/tally").device
    rounds, writers = 200, 4

    def write_many() -> None:
        with kernel.open("/dev/tally", os.O_WRONLY) as f:
            for _ in range(rounds):
                f.write(b"+")

    started = [threads.start(write_many) for _ in range(writers)]
    threads.join(*started, timeout=20)  # a lost wakeup leaves a writer waiting for ever
    for outcome in started:
        outcome.result()
    assert (tally.value, tally.most) == (rounds * writers, 1)


def test_a_device_lock_is_a_plain_lock() -> None:
    import threading

    from pykld.kernel.devfs import DeviceLock

    lock = DeviceLock()
    assert lock.acquire(False) and lock.locked()
    assert not lock.acquire(False)
    taken = threading.Event()

    def take() -> None:
        lock.acquire()
        taken.set()
        lock.release()

    waiter = threading.Thread(target=take, daemon=True)
    waiter.start()
    assert not taken.wait(0.05)  # waits while held
    lock.release()
    assert taken.wait(5)  # and is woken by the release
    waiter.join(5)
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
