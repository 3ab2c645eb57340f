"""Devices: make_dev names, permissions, cdevsw defaults, per-open state, serialisation."""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections.abc import Callable

import pytest

from pykld import POLLIN, POLLOUT, POLLPRI, POLLRDNORM, POLLWRNORM, Kernel, make_dev
from pykld.kernel.sched import Thread

Load = Callable[..., int]


def errno_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(OSError) as excinfo:
        call()
    return excinfo.value.errno


def devices_driver(*specs: str) -> str:
    """A module whose LOAD makes one plain device per spec: 'name' or 'name, uid=.., mode=..'."""
    calls = "\n".join(f"        make_dev(Plain(), {spec})" for spec in specs)
    return f'''
from pykld import CharacterDevice, Module, make_dev

class Plain(CharacterDevice):
    pass

class Drv(Module):
    name = "drv"

    def load(self):
{calls}
'''


# -- names -------------------------------------------------------------------------


def test_names_with_directories(kernel: Kernel, load_driver: Load) -> None:
    load_driver(devices_driver('"bus/i2c-1"', '"bus/i2c-2"', '"bus/spi/0"', '"top"'))
    assert sorted(kernel.kldstat()[0].devices) == ["bus/i2c-1", "bus/i2c-2", "bus/spi/0", "top"]
    assert kernel.devfs.directories() == {"bus", "bus/spi"}
    assert kernel.lookup("/dev/bus/i2c-1").path == "/dev/bus/i2c-1"
    assert kernel.lookup("bus/spi/0").name == "bus/spi/0"
    with kernel.open("/dev/bus/spi/0"):
        pass
    assert errno_of(lambda: kernel.open("/dev/bus")) == errno.ENOENT  # a directory, not a device
    assert errno_of(lambda: kernel.open("/dev/bus/i2c-3")) == errno.ENOENT


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "..", ".", "a/../b", "a/./b", "a/", "x\0y", "n" * 256])
def test_invalid_names_are_einval(kernel: Kernel, load_driver: Load, name: str) -> None:
    assert errno_of(lambda: load_driver(devices_driver('"ok"', repr(name)))) == errno.EINVAL
    assert list(kernel.devfs) == []  # the failed LOAD took "ok" away too


def test_longest_name_is_fine(kernel: Kernel, load_driver: Load) -> None:
    load_driver(devices_driver(repr("n" * 255)))
    assert kernel.kldstat()[0].devices == ["n" * 255]


def test_duplicate_name_is_eexist(kernel: Kernel, load_driver: Load) -> None:
    assert errno_of(lambda: load_driver(devices_driver('"dup"', '"dup"'))) == errno.EEXIST


def test_duplicate_across_modules_is_eexist(kernel: Kernel, load_driver: Load, example) -> None:
    kernel.kldload(example("hello"))
    assert errno_of(lambda: load_driver(devices_driver('"rustmodule"'))) == errno.EEXIST
    assert [s.name for s in kernel.kldstat()] == ["hello"]


@pytest.mark.parametrize(("first", "second"), [("bus/i2c-1", "bus"), ("bus", "bus/i2c-1"),
                                                ("a/b/c", "a/b"), ("a/b", "a/b/c/d")])
def test_name_colliding_with_a_directory_is_eexist(kernel: Kernel, load_driver: Load, first: str,
                                                   second: str) -> None:
    assert errno_of(lambda: load_driver(devices_driver(repr(first), repr(second)))) == errno.EEXIST


def test_similar_prefixes_do_not_collide(kernel: Kernel, load_driver: Load) -> None:
    load_driver(devices_driver('"bus"', '"bus2/x"', '"busy"'))
    assert sorted(kernel.kldstat()[0].devices) == ["bus", "bus2/x", "busy"]


@pytest.mark.parametrize("mode", [-1, 0o10000, "0644"])
def test_invalid_mode_is_einval(kernel: Kernel, load_driver: Load, mode: object) -> None:
    assert errno_of(lambda: load_driver(devices_driver(f'"m", mode={mode!r}'))) == errno.EINVAL


def test_make_dev_outside_the_kernel_is_an_error() -> None:
    from pykld import CharacterDevice

    with pytest.raises(RuntimeError):
        make_dev(CharacterDevice(), "nowhere")


def test_devfs_tells_listeners(kernel: Kernel, load_driver: Load) -> None:
    seen: list[tuple[str, str]] = []
    kernel.devfs.subscribe(lambda what, cdev: seen.append((what, cdev.name)))
    load_driver(devices_driver('"x/a"'))
    kernel.kldunload("drv")
    assert seen == [("create", "x/a"), ("destroy", "x/a")]


def test_devices_made_and_destroyed_from_operations(kernel: Kernel, load_driver: Load) -> None:
    load_driver(
        """
        from pykld import CharacterDevice, Module, destroy_dev, make_dev

        class Control(CharacterDevice):
            def __init__(self):
                self.clones = []

            def ioctl(self, file, cmd, data):
                if cmd == 1:
                    self.clones.append(make_dev(CharacterDevice(), f"clone/{len(self.clones)}"))
                elif cmd == 2:
                    destroy_dev(self.clones.pop())
                return len(self.clones)

        class Drv(Module):
            name = "drv"

            def load(self):
                make_dev(Control(), "control")
        """
    )
    with kernel.open("/dev/control") as f:
        assert f.ioctl(1).result == 1
        assert f.ioctl(1).result == 2
        assert f.ioctl(2).result == 1
    assert sorted(kernel.kldstat()[0].devices) == ["clone/0", "control"]
    kernel.kldunload("drv")  # made by an operation, still the module's: gone with it
    assert list(kernel.devfs) == []


# -- cdevsw defaults ---------------------------------------------------------------


def test_defaults_of_a_bare_device(kernel: Kernel, load_driver: Load) -> None:
    load_driver(devices_driver('"bare"'))
    with kernel.open("/dev/bare", os.O_RDWR) as f:
        assert errno_of(f.read) == errno.ENODEV
        assert errno_of(lambda: f.write(b"x")) == errno.ENODEV
        assert errno_of(lambda: f.ioctl(0x1234)) == errno.ENOTTY
        every = POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM
        assert f.poll(every | POLLPRI) == every  # always ready, never urgent data
        assert f.poll(POLLIN, timeout=None) == POLLIN


# -- permissions ---------------------------------------------------------------------

USER = {"uid": 1000, "gids": (1000,)}


@pytest.fixture
def perms(kernel: Kernel, load_driver: Load) -> Kernel:
    load_driver(devices_driver(
        '"root600", mode=0o600',
        '"root644", mode=0o644',
        '"root444", mode=0o444',
        '"mine600", uid=1000, mode=0o600',
        '"mine066", uid=1000, gid=1000, mode=0o066',
        '"group060", gid=1000, mode=0o060',
        '"other006", uid=5, gid=5, mode=0o006',
    ))
    return kernel


@pytest.mark.parametrize(
    ("name", "readable", "writable"),
    [
        ("root600", False, False),
        ("root644", True, False),
        ("root444", True, False),
        ("mine600", True, True),
        ("mine066", False, False),  # the owner's bits apply to the owner, even when others get more
        ("group060", True, True),
        ("other006", True, True),
    ],
)
def test_access_for_a_user(perms: Kernel, name: str, readable: bool, writable: bool) -> None:
    path = f"/dev/{name}"
    for flags, allowed in ((os.O_RDONLY, readable), (os.O_WRONLY, writable),
                           (os.O_RDWR, readable and writable), (3, readable and writable)):
        if allowed:
            perms.open(path, flags, **USER).close()
        else:
            assert errno_of(lambda flags=flags: perms.open(path, flags, **USER)) == errno.EACCES


def test_root_bypasses_permissions(perms: Kernel) -> None:
    for name in ("root600", "root444", "mine066", "group060"):
        perms.open(f"/dev/{name}", os.O_RDWR, uid=0, gids=(0,)).close()


def test_refused_open_holds_no_reference(perms: Kernel) -> None:
    with pytest.raises(OSError):
        perms.open("/dev/root600", os.O_RDONLY, **USER)
    assert perms.kldstat()[0].refs == 0


def test_open_flags_reach_the_driver(kernel: Kernel, load_driver: Load) -> None:
    load_driver(
        """
        import os
        from pykld import CharacterDevice, Module, make_dev

        class ReadOnly(CharacterDevice):
            def open(self, file):
                if file.flags & os.O_ACCMODE != os.O_RDONLY:
                    raise OSError(30, "read-only device")  # EROFS

        class Drv(Module):
            name = "drv"

            def load(self):
                make_dev(ReadOnly(), "ro", mode=0o666)
        """
    )
    kernel.open("/dev/ro", os.O_RDONLY | os.O_CREAT | os.O_TRUNC).close()
    assert errno_of(lambda: kernel.open("/dev/ro", os.O_WRONLY)) == errno.EROFS
    assert kernel.kldstat()[0].refs == 0


# -- per-open state ------------------------------------------------------------------

COUNTER = '''
from pykld import CharacterDevice, Module, make_dev

class Counter(CharacterDevice):
    def open(self, file):
        file.private = {"reads": 0}

    def read(self, file, uio):
        file.private["reads"] += 1
        uio.uiomove(str(file.private["reads"]).encode())

class Drv(Module):
    name = "drv"

    def load(self):
        make_dev(Counter(), "counter", mode=0o666)
'''


def test_private_state_is_per_open(kernel: Kernel, load_driver: Load) -> None:
    load_driver(COUNTER)
    a, b = kernel.open("/dev/counter"), kernel.open("/dev/counter")
    assert [a.read(), a.read(), a.read()] == [b"1", b"2", b"3"]
    assert b.read() == b"1"
    assert a.read() == b"4"
    a.close()
    b.close()
    with kernel.open("/dev/counter") as c:
        assert c.read() == b"1"


# -- serialisation -------------------------------------------------------------------

CONCURRENCY = '''
import threading
import time
from pykld import CharacterDevice, Module, make_dev

class Recorder(CharacterDevice):
    serialized = SERIALIZED

    def __init__(self):
        self.guard = threading.Lock()
        self.inside = 0
        self.most = 0
        self.meet = threading.Barrier(2, timeout=2)

    def read(self, file, uio):
        with self.guard:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            if uio.resid == 1:
                self.meet.wait()  # two callers inside at once, or BrokenBarrierError
            else:
                time.sleep(0.002)
        finally:
            with self.guard:
                self.inside -= 1
        uio.uiomove(str(self.most).encode())

class Drv(Module):
    name = "drv"

    def load(self):
        make_dev(Recorder(), "rec", mode=0o666)
'''


def test_serialized_by_default(kernel: Kernel, load_driver: Load, threads) -> None:
    load_driver(CONCURRENCY.replace("SERIALIZED", "True"))

    def reads() -> None:
        with kernel.open("/dev/rec") as f:
            for _ in range(5):
                f.read(100)

    workers = [threads.start(reads) for _ in range(4)]
    threads.join(*workers)
    for w in workers:
        w.result()
    with kernel.open("/dev/rec") as f:
        assert f.read(100) == b"1"  # never two callers inside the driver


def test_opt_out_allows_overlap(kernel: Kernel, load_driver: Load, threads) -> None:
    load_driver(CONCURRENCY.replace("SERIALIZED", "False"))
    files = [kernel.open("/dev/rec") for _ in range(2)]
    meets = [threads.start(lambda f=f: f.read(1)) for f in files]  # both wait at the barrier
    threads.join(*meets)
    assert [m.result() for m in meets] == [b"2", b"2"]
    for f in files:
        f.close()


def test_serialized_device_cannot_meet_itself(kernel: Kernel, load_driver: Load, threads) -> None:
    # The same barrier on a serialized device breaks: the second caller waits for the lock.
    load_driver(CONCURRENCY.replace("SERIALIZED", "True").replace("timeout=2", "timeout=0.1"))
    files = [kernel.open("/dev/rec") for _ in range(2)]
    meets = [threads.start(lambda f=f: f.read(1)) for f in files]
    threads.join(*meets)
    errors = [m.error for m in meets]
    assert all(isinstance(e, OSError) and e.errno == errno.EIO for e in errors)  # BrokenBarrierError
    for f in files:
        f.close()


HOLDER = '''
import threading
from pykld import CharacterDevice, Module, make_dev

class Holder(CharacterDevice):
    """Its reads keep the device lock until `release` is set (no sleep() to drop it)."""
    def __init__(self):
        self.release = threading.Event()
        self.reads = 0
    def read(self, file, uio):
        self.reads += 1
        self.release.wait(5)
        uio.move_out(b"done")

class HolderModule(Module):
    name = "holder"
    def load(self):
        make_dev(Holder(), "holder", mode=0o666)
'''


def test_caller_waiting_for_the_lock_of_a_destroyed_device_gets_enxio(kernel: Kernel, load_driver: Load,
                                                                      threads, wait_until) -> None:
    load_driver(HOLDER, name="holder")
    cdev = kernel.lookup("/dev/holder")
    device = cdev.device
    first, second = kernel.open_cdev(cdev), kernel.open_cdev(cdev)
    inside = threads.start(lambda: first.read(0, 10))
    wait_until(lambda: device.reads == 1)  # the first read holds the device lock
    td = Thread()
    queued_for_lock = threading.Event()
    td.before_block = queued_for_lock.set  # called once the device is found busy, before the lock wait
    queued = threads.start(lambda: second.read(0, 10, td=td))
    assert queued_for_lock.wait(5)
    destroyer = threads.start(cdev.destroy)  # waits for the operations in the driver to leave
    wait_until(lambda: cdev.destroyed)
    device.release.set()
    threads.join(inside, queued, destroyer)
    inside.result()  # the read already inside the driver finishes normally
    assert isinstance(queued.error, OSError) and queued.error.errno == errno.ENXIO
    assert device.reads == 1  # the queued read never reached the driver of a device that is gone


STUBBORN = '''
import time
from pykld import CharacterDevice, Module, SelInfo, make_dev, selrecord

class Stubborn(CharacterDevice):
    """Never ready, never wakes its pollers; its read takes a while without sleep()."""
    def __init__(self):
        self.sel = SelInfo()
        self.log = []
    def poll(self, file, events):
        selrecord(self.sel)
        return 0
    def read(self, file, uio):
        time.sleep(0.3)
        self.log.append("read done")
        uio.move_out(b"late")

class StubbornModule(Module):
    name = "stubborn"
    def load(self):
        self.dev = Stubborn()
        make_dev(self.dev, "stubborn", mode=0o666)
    def unload(self):
        self.dev.log.append("unload")
'''


def test_destroy_wakes_pollers_the_driver_forgot(kernel, load_driver) -> None:  # type: ignore[no-untyped-def]
    load_driver(STUBBORN, name="stubborn")
    f = kernel.open("/dev/stubborn")
    outcome: list[object] = []

    def poller() -> None:
        try:
            outcome.append(f.poll(select.POLLIN, timeout=None))
        except OSError as exc:
            outcome.append(exc.errno)

    thread = threading.Thread(target=poller, daemon=True)
    thread.start()
    time.sleep(0.1)
    kernel.kldunload("stubborn", force=True)
    thread.join(5)
    assert not thread.is_alive(), "a poller on a destroyed device was never woken"
    assert outcome == [errno.ENXIO]


def test_destroy_waits_for_operations_inside_the_driver(kernel, load_driver) -> None:  # type: ignore[no-untyped-def]
    load_driver(STUBBORN, name="stubborn")
    device = kernel.devfs.lookup("stubborn").device  # type: ignore[union-attr]
    f = kernel.open("/dev/stubborn")
    reader = threading.Thread(target=lambda: f.read(10), daemon=True)
    reader.start()
    time.sleep(0.1)  # the read is inside the driver now
    kernel.kldunload("stubborn", force=True)
    assert "read done" in device.log  # the unload returned only after the read left the driver
    reader.join(5)
