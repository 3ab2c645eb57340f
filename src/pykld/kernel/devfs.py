"""devfs: the namespace of character devices, and who is told when it changes.

A cdev is what make_dev(9) returns: a name (which may contain directories),
ownership and mode, the driver object that serves it, and the lock that
serialises its operations unless the driver opts out.
"""

from __future__ import annotations

import errno
import itertools
import select
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pykld.kernel.sched import Poller, Thread, curthread

if TYPE_CHECKING:
    from pykld.kernel.fail import FailRule
    from pykld.kernel.modules import LoadedModule

MAX_NAME = 255  # SPECNAMELEN
MAY_READ, MAY_WRITE = stat.S_IROTH, stat.S_IWOTH  # permission bits, as in a mode's "other" triple
# The access-mode rule, one for the open-time check and the descriptor's after it:
# O_ACCMODE -> (permission the open needs, what the descriptor may do).  Mode 3 is
# Linux's ioctl-only open: it needs read and write permission and allows neither (ACC_MODE).
ACCESS_MODES = {
    0: (MAY_READ, MAY_READ),  # O_RDONLY
    1: (MAY_WRITE, MAY_WRITE),  # O_WRONLY
    2: (MAY_READ | MAY_WRITE, MAY_READ | MAY_WRITE),  # O_RDWR
    3: (MAY_READ | MAY_WRITE, 0),
}
DRAIN_TIMEOUT = 5.0  # seconds destroy_dev waits for operations inside the driver
_inodes = itertools.count(2)  # 1 is the devfs root


@dataclass
class CdevStats:
    opens: int = 0
    reads: int = 0
    writes: int = 0
    ioctls: int = 0
    polls: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    errors: int = 0  # operations that failed with the driver's errno
    faults: int = 0  # operations the driver crashed in (the caller got EIO)
    injected: int = 0  # faults a fail point injected (kernel/fail.py)


class DeviceLock:
    """The lock that serialises a device's operations (make_dev's, unless the driver
    locks for itself): a plain, non-recursive lock, taken and dropped on every request.

    Free, it holds one token in a list; taking it pops the token, dropping it puts the
    token back, each one call that the GIL makes atomic (a free-threaded build locks the
    list for it), where threading.Lock's acquire(False) and release cost a tenth of a
    4 KiB read.  file.py's dispatch does exactly that inline; acquire() and release()
    are the same for everyone else (sleep() drops and retakes it).  A taker that finds
    no token waits on a Condition; a release wakes one waiter whenever any waits.

    No wakeup is lost: a waiter counts itself in `waiting` (under the Condition's lock)
    before it looks for the token a last time, and a release puts the token back before
    it reads `waiting`; so either the waiter sees the token, or the release sees the
    waiter and notifies it, which it can only do once the waiter is inside wait()."""

    __slots__ = ("token", "waiting", "_turn")

    def __init__(self) -> None:
        self.token: list[bool] = [True]  # one entry while free, none while held
        self.waiting = 0  # threads in acquire()'s slow path
        self._turn = threading.Condition(threading.Lock())

    def acquire(self, blocking: bool = True) -> bool:
        try:
            self.token.pop()
            return True
        except IndexError:
            if not blocking:
                return False
        with self._turn:
            self.waiting += 1
            try:
                while True:
                    try:
                        self.token.pop()
                        return True
                    except IndexError:
                        self._turn.wait()
            finally:
                self.waiting -= 1

    def release(self) -> None:
        if self.token:
            raise RuntimeError("release of a device lock that is not held")
        self.token.append(True)
        if self.waiting:
            self.wake()

    def wake(self) -> None:
        """Let one waiter look for the token again (a release saw one waiting)."""
        with self._turn:
            self._turn.notify()

    def locked(self) -> bool:
        return not self.token


def no_open(file: Any) -> None:
    """nullop: a device without open accepts every open."""


def no_close(file: Any) -> None:
    """nullop."""


def no_read(file: Any, uio: Any) -> None:
    raise OSError(errno.ENODEV, "device does not support read", None)


def no_write(file: Any, uio: Any) -> None:
    raise OSError(errno.ENODEV, "device does not support write", None)


def no_ioctl(file: Any, cmd: int, data: Any) -> None:
    raise OSError(errno.ENOTTY, f"inappropriate ioctl {cmd:#x} for device", None)


def no_poll(file: Any, events: int) -> int:
    """Always ready for reading and writing, as FreeBSD's no_poll."""
    return events & (select.POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM)


_DEFAULTS = {"open": no_open, "close": no_close, "read": no_read, "write": no_write, "ioctl": no_ioctl,
             "poll": no_poll}


class CdevSw:
    """The device's operations, bound once when it is made (kern_conf's prep_cdevsw):
    the driver's methods, or the named defaults above for those it lacks."""

    __slots__ = ("open", "close", "read", "write", "ioctl", "poll")

    def __init__(self, device: Any) -> None:
        for name, default in _DEFAULTS.items():
            setattr(self, name, getattr(device, name, default))

    open: Callable[..., Any]
    close: Callable[..., Any]
    read: Callable[..., Any]
    write: Callable[..., Any]
    ioctl: Callable[..., Any]
    poll: Callable[..., Any]


@dataclass(eq=False)
class Cdev:
    name: str
    device: Any  # the driver's CharacterDevice
    uid: int
    gid: int
    mode: int  # permission bits only
    module: LoadedModule | None
    lock: DeviceLock | None  # None when the driver serialises itself
    seekable: bool
    # The transport that publishes this device ("pty" for a serial port), None: the daemon's.
    transport: str | None = None
    ino: int = field(default_factory=lambda: next(_inodes))
    created: float = field(default_factory=time.time)
    open_count: int = 0
    destroyed: bool = False
    active: set[Thread] = field(default_factory=set)  # operations in progress
    drained: threading.Condition = field(default_factory=threading.Condition)  # an operation left, once destroyed
    # Pollers that have polled this device: a destroy wakes them, so that no poll
    # waits for ever on a device that is gone, whatever the driver forgot to wake.
    pollers: weakref.WeakSet[Poller] = field(default_factory=weakref.WeakSet)
    stats: CdevStats = field(default_factory=CdevStats)
    failpoints: list[FailRule] = field(default_factory=list)  # fail(9) rules; replaced whole, never mutated
    devfs: Devfs | None = None
    ops: CdevSw = field(init=False)

    def __post_init__(self) -> None:
        self.ops = CdevSw(self.device)

    @property
    def path(self) -> str:
        return "/dev/" + self.name

    def destroy(self) -> None:
        """destroy_dev(9): remove the node; open files get ENXIO, sleepers are woken."""
        if self.devfs is not None:
            self.devfs.remove(self)

    def may_open(self, uid: int, gids: tuple[int, ...], flags: int) -> bool:
        """The access check a real device node gets from the kernel."""
        if uid == 0:
            return True
        want = ACCESS_MODES[flags & 3][0]
        if uid == self.uid:
            granted = (self.mode >> 6) & 7
        elif self.gid in gids:
            granted = (self.mode >> 3) & 7
        else:
            granted = self.mode & 7
        return want & granted == want


def check_name(name: str) -> str:
    """A devfs name: relative, no empty, '.' or '..' components, no NUL, not too long."""
    if not isinstance(name, str) or not name:
        raise OSError(errno.EINVAL, f"invalid device name {name!r}", None)
    parts = name.split("/")
    if len(name) > MAX_NAME or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise OSError(errno.EINVAL, f"invalid device name {name!r}", None)
    return name


Listener = Callable[[str, Cdev], None]  # ("create" | "destroy", cdev)


class Devfs:
    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.log = log or (lambda text: None)  # the kernel's message buffer
        self._lock = threading.Lock()
        self._cdevs: dict[str, Cdev] = {}
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def add(self, cdev: Cdev) -> Cdev:
        name = check_name(cdev.name)
        with self._lock:
            if name in self._cdevs:
                raise OSError(errno.EEXIST, f"device {name!r} already exists", None)
            for other in self._cdevs:
                # A name cannot be both a device and a directory of devices.
                if other.startswith(name + "/") or name.startswith(other + "/"):
                    raise OSError(errno.EEXIST, f"device {name!r} collides with {other!r}", None)
            self._cdevs[name] = cdev
            cdev.devfs = self
        self._tell("create", cdev)
        return cdev

    def remove(self, cdev: Cdev) -> None:
        with self._lock:
            if self._cdevs.get(cdev.name) is not cdev:
                return
            del self._cdevs[cdev.name]
            cdev.destroyed = True
            sleepers = list(cdev.active)
        for td in sleepers:
            td.interrupt(errno.ENXIO)
        for poller in list(cdev.pollers):
            poller.notify()
        self._drain(cdev)
        self._tell("destroy", cdev)

    def _drain(self, cdev: Cdev, timeout: float | None = None) -> None:
        """Wait for the operations still inside the driver to leave, as destroy_dev(9)
        does, so an unload does not pull the module from under them; each leaving
        operation of a destroyed device signals `drained`.  A driver that destroys its
        own device from one of its operations is not made to wait: it may hold the
        device lock the others wait for (FreeBSD's destroy_dev_sched case)."""
        me = curthread()
        if me is not None and me in cdev.active:
            return
        with cdev.drained:
            if cdev.drained.wait_for(lambda: not cdev.active, DRAIN_TIMEOUT if timeout is None else timeout):
                return
            still = len(cdev.active)
        self.log(f"destroy_dev: Still {still} threads in {cdev.path}; destroying it anyway")

    def _tell(self, what: str, cdev: Cdev) -> None:
        for listener in list(self._listeners):
            listener(what, cdev)

    def lookup(self, name: str) -> Cdev | None:
        return self._cdevs.get(name)

    def __iter__(self) -> Iterator[Cdev]:
        with self._lock:
            return iter(list(self._cdevs.values()))

    def directories(self) -> set[str]:
        """Every directory implied by the device names ("bus" for "bus/i2c-1")."""
        dirs: set[str] = set()
        for name in list(self._cdevs):
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:depth]))
        return dirs
