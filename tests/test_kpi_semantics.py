"""KPI semantics a driver author relies on: sleep drops every lock it must, uiomove moves
both ways, file.nonblock is the caller's flag now, the kernel's retry signal is not the
driver's to catch, module discovery and events, and ioctl(2)'s two results."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest

from pykld import Kernel
from pykld.kernel.uaccess import IovecMemory, NeedIovecs

Load = Callable[..., int]

MAILBOX = '''
from pykld import CharacterDevice, Module, Mutex, make_dev, sleep, wakeup

class Mailbox(CharacterDevice):  # serialized (the default), with a mutex of its own
    def __init__(self):
        self.mtx = Mutex("mailbox")
        self.ready = False

    def read(self, file, uio):
        with self.mtx:
            while not self.ready:
                sleep(self, lock=self.mtx)  # must drop the device lock too, or the writer never gets in
            self.ready = False
            uio.uiomove(b"mail")

    def write(self, file, uio):
        uio.move_in()
        with self.mtx:
            self.ready = True
            wakeup(self)

class Drv(Module):
    name = "drv"

    def load(self):
        make_dev(Mailbox(), "mailbox", mode=0o666)
'''


def test_sleep_with_a_mutex_releases_the_device_lock_too(kernel: Kernel, load_driver: Load, threads,
                                                         wait_until) -> None:
    load_driver(MAILBOX)
    reader = kernel.open("/dev/mailbox")
    got = threads.start(reader.read)
    wait_until(lambda: len(kernel.lookup("/dev/mailbox").active) == 1)
    writer = threads.start(lambda: kernel.open("/dev/mailbox", os.O_WRONLY).write(b"x"))
    threads.join(writer, got, timeout=2)  # with the device lock kept, the writer waits for ever
    assert got.result() == b"mail"
    reader.close()


ECHO = '''
import os
from pykld import CharacterDevice, Module, make_dev

class Echo(CharacterDevice):
    def __init__(self):
        self.buf = bytearray(8)
        self.count = 0

    def write(self, file, uio):
        self.count = uio.uiomove(self.buf)  # a write copies into the buffer
        uio.move_in()  # the rest is dropped

    def read(self, file, uio):
        if uio.offset == 0:
            uio.uiomove(bytes(self.buf[: self.count]))

    def ioctl(self, file, cmd, data):
        if cmd == 1:
            return int(file.nonblock)
        return super().ioctl(file, cmd, data)

class Drv(Module):
    name = "drv"

    def load(self):
        make_dev(Echo(), "echo", mode=0o666)
'''


def test_uiomove_moves_both_ways(kernel: Kernel, load_driver: Load) -> None:
    load_driver(ECHO)
    with kernel.open("/dev/echo", os.O_RDWR) as f:
        assert f.write(b"hello, world") == 12
        assert f.pread(100, 0) == b"hello, w"  # the 8 bytes uiomove copied in


def test_file_nonblock_follows_the_requests_flags(kernel: Kernel, load_driver: Load) -> None:
    load_driver(ECHO)
    file = kernel.open_cdev("/dev/echo", os.O_RDWR)
    assert file.ioctl(1)[0] == 0
    file.read(0, 1, flags=os.O_RDWR | os.O_NONBLOCK)  # fcntl(F_SETFL, O_NONBLOCK) after open
    assert file.nonblock and file.ioctl(1)[0] == 1
    file.read(0, 1, flags=os.O_RDWR)
    assert not file.nonblock
    file.close()


CAREFUL = '''
from pykld import CharacterDevice, Module, copyin, make_dev

class Careful(CharacterDevice):
    def ioctl(self, file, cmd, data):
        try:
            return len(copyin(data, 4))
        except Exception:  # a driver's defensive catch-all
            return -1

class Drv(Module):
    name = "drv"

    def load(self):
        make_dev(Careful(), "careful", mode=0o666)
'''


def test_a_drivers_except_exception_does_not_swallow_the_retry(kernel: Kernel, load_driver: Load) -> None:
    load_driver(CAREFUL)
    file = kernel.open_cdev("/dev/careful")
    with pytest.raises(NeedIovecs) as excinfo:
        file.ioctl(1, 0x1000, None, IovecMemory([], b""))
    assert excinfo.value.reads == [(0x1000, 4)]
    assert file.ioctl(1, 0x1000, None, IovecMemory([(0x1000, 4)], b"abcd")) == (4, None)
    assert file.cdev.stats.faults == 0
    file.close()


def test_a_helper_base_class_is_not_a_second_module(kernel: Kernel, load_driver: Load) -> None:
    load_driver('''
        from pykld import Module, printf

        class Base(Module):
            def load(self):
                printf(f"loaded {type(self).__name__}")

        class Real(Base):
            name = "real"
    ''')
    assert [m.name for m in kernel.kldstat()] == ["real"]
    assert any("real: loaded Real" in line for line in kernel.dmesg())


def test_driver_state_named_like_an_event_does_not_replace_it(kernel: Kernel, load_driver: Load) -> None:
    load_driver('''
        from pykld import Module, printf

        class Drv(Module):
            name = "drv"

            def load(self):
                self.shutdown = False  # state, not the handler
                self.unload = "later"

            def shutdown(self):
                printf("SHUTDOWN handled")

            def unload(self):
                printf("UNLOAD handled")
    ''')
    kernel.shutdown()
    assert [line for line in kernel.dmesg() if "handled" in line and "fault" not in line]
    assert not [line for line in kernel.dmesg() if "fault" in line]
    assert any("drv: UNLOAD handled" in line for line in kernel.dmesg())
    assert any("drv: SHUTDOWN handled" in line for line in kernel.dmesg())


SIZED = '''
from pykld import _IOWR, CharacterDevice, Module, make_dev

class Sized(CharacterDevice):
    def ioctl(self, file, cmd, data):
        data[:] = bytes(reversed(data))
        return 7

class Drv(Module):
    name = "drv"

    def load(self):
        make_dev(Sized(), "sized", mode=0o666)
'''


def test_ioctl_gives_the_result_and_the_copied_out_bytes(kernel: Kernel, load_driver: Load) -> None:
    from pykld import _IOWR

    load_driver(SIZED)
    cmd = _IOWR("S", 1, 4)
    with kernel.open("/dev/sized") as f:
        assert f.ioctl(cmd, b"abcd") == (7, b"dcba")
        assert f.ioctl(cmd, b"abcd").result == 7
        arg = bytearray(b"wxyz")
        assert f.ioctl(cmd, arg).data == b"zyxw"
        assert arg == b"zyxw"  # updated in place, as ioctl(2) updates the caller's structure
        with pytest.raises(OSError) as excinfo:
            f.ioctl(cmd, b"ab")
        assert excinfo.value.errno == errno.EFAULT


def test_the_driver_sees_who_opened(kernel: Kernel, load_driver: Load) -> None:
    load_driver('''
        from pykld import CharacterDevice, Module, make_dev

        class Who(CharacterDevice):
            def open(self, file):
                file.private = (file.uid, file.gids, file.pid)

            def read(self, file, uio):
                uio.move_out(repr(file.private).encode())

        class Drv(Module):
            name = "drv"

            def load(self):
                make_dev(Who(), "who", mode=0o666)
    ''')
    file = kernel.open_cdev("/dev/who", uid=1234, gids=(5678,), pid=42)
    assert file.read(0, 100).tobytes() == b"(1234, (5678,), 42)"
    file.close()


def test_sleeps_that_ended_leave_no_trace_in_the_sleep_queue() -> None:
    """A daemon sleeps on countless channels over its life: an ended sleep must not stay queued."""
    from pykld import sleep
    from pykld.kernel import sched

    for chan in range(100):
        assert sleep(("test-chan", chan), timeout=0) is False
    assert not [c for c in sched._sleepq._sleepers if isinstance(c, tuple) and c[0] == "test-chan"]


def test_eio_carries_the_drivers_exception_as_its_cause(kernel: Kernel, load_driver: Load) -> None:
    load_driver('''
        from pykld import CharacterDevice, Module, make_dev

        class Crash(CharacterDevice):
            def read(self, file, uio):
                raise KeyError("driver bug")

        class Drv(Module):
            name = "drv"

            def load(self):
                make_dev(Crash(), "crash", mode=0o666)
    ''')
    with kernel.open("/dev/crash") as f, pytest.raises(OSError) as excinfo:
        f.read()
    assert excinfo.value.errno == errno.EIO
    assert isinstance(excinfo.value.__cause__, KeyError)  # what a debugger or a test shows next


def test_unload_forgets_the_drivers_code(kernel: Kernel, load_driver: Load) -> None:
    import sys

    load_driver("from pykld import Module\nclass Drv(Module):\n    name = 'drv'\n")
    (loaded,) = [name for name in sys.modules if name.startswith("pykld_loaded_") and name.endswith("_drv")]
    kernel.kldunload("drv")
    assert loaded not in sys.modules  # a reload imports the file afresh, and nothing leaks


def test_make_dev_refuses_a_name_that_is_not_a_string(kernel: Kernel, load_driver: Load) -> None:
    with pytest.raises(OSError) as excinfo:
        load_driver('''
            from pykld import CharacterDevice, Module, make_dev

            class Drv(Module):
                name = "drv"

                def load(self):
                    make_dev(CharacterDevice(), 5)
        ''')
    assert excinfo.value.errno == errno.EINVAL


def test_seek_on_a_closed_file_is_ebadf(kernel: Kernel, example: Callable[[str], str]) -> None:
    kernel.kldload(example("hello"))
    f = kernel.open("/dev/rustmodule")
    f.close()
    with pytest.raises(OSError) as excinfo:
        f.seek(0)
    assert excinfo.value.errno == errno.EBADF


def test_uiomove_counts_bytes_of_a_wide_memoryview() -> None:
    from array import array

    from pykld import Uio

    uio = Uio.for_read(0, 100)
    assert uio.uiomove(memoryview(array("H", [1, 2, 3]))) == 6
    assert uio.resid == 94
