"""Threads of execution in the kernel: curthread, sleep/wakeup and select/poll wake-ups.

Every module event and device operation runs with a `Thread` as curthread (the
FreeBSD `td`): it says which kernel, module and open file the code serves, and
it is what an interrupt (a caller's signal, a forced destroy) reaches.  sleep()
drops the lock the sleeper holds, as msleep(9) drops its mutex, so a writer can
get in to wake a reader.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pykld.kernel.kernel import Kernel
    from pykld.kernel.modules import LoadedModule
    from pykld.kernel.uaccess import UserMemory


class Poller(Protocol):
    """Someone waiting in poll/select for a device to become ready."""

    def notify(self) -> None: ...


class Thread:
    """The context of one event or operation in the kernel (FreeBSD's struct thread)."""

    __slots__ = ("kernel", "module", "nonblock", "lock", "poller", "memory", "before_block",
                 "interrupted", "_wait")

    def __init__(self, kernel: Kernel | None = None, module: LoadedModule | None = None) -> None:
        self.kernel = kernel
        self.module = module
        self.nonblock = False  # the caller asked for O_NONBLOCK
        self.lock: Any = None  # the device lock held for this operation, if serialized
        self.poller: Poller | None = None  # set while a poll operation runs
        self.memory: UserMemory | None = None  # the caller's address space, where reachable
        # Called before this thread may block (sleep, a busy device lock): the
        # transport lets another thread take new requests meanwhile.
        self.before_block: Callable[[], None] | None = None
        self.interrupted = 0  # errno that ends any sleep of this thread (EINTR, ENXIO)
        self._wait: threading.Event | None = None

    def interrupt(self, error: int = errno.EINTR) -> None:
        """End this thread's current or next sleep with `error`."""
        self.interrupted = error
        wait = self._wait
        if wait is not None:
            wait.set()


class Seat:
    """Where an OS thread keeps its curthread (FreeBSD's pc_curthread): one per OS thread,
    made at its first operation; an operation takes it with two attribute stores.  A
    ContextVar set and reset, as before, cost a sixth of a 4 KiB read, and a ContextVar
    copied into another thread (asyncio.to_thread) would share a seat between two."""

    __slots__ = ("td",)

    def __init__(self) -> None:
        self.td: Thread | None = None


#: seats.seat is this OS thread's Seat, once seat() has made it (the hot path reads it
#: directly, and calls seat() on the AttributeError of a thread's first operation).
seats = threading.local()


def seat() -> Seat:
    """This OS thread's Seat."""
    try:
        return seats.seat  # type: ignore[no-any-return]
    except AttributeError:
        here = seats.seat = Seat()
        return here


def curthread() -> Thread | None:
    try:
        return seats.seat.td  # type: ignore[no-any-return]
    except AttributeError:
        return None


def enter(td: Thread) -> Thread | None:
    """Make `td` curthread; returns the token for leave(), the one before."""
    here = seat()
    before = here.td
    here.td = td
    return before


def leave(token: Thread | None) -> None:
    """Restore the curthread enter() replaced (leaves nest as enters did)."""
    seats.seat.td = token


class _SleepQueue:
    """Sleepers by channel; one per process, since channels are object identities."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sleepers: dict[Hashable, list[threading.Event]] = {}

    def add(self, chan: Hashable, event: threading.Event) -> None:
        with self._lock:
            self._sleepers.setdefault(chan, []).append(event)

    def remove(self, chan: Hashable, event: threading.Event) -> None:
        with self._lock:
            waiting = self._sleepers.get(chan)
            if waiting and event in waiting:
                waiting.remove(event)
                if not waiting:
                    del self._sleepers[chan]

    def wake(self, chan: Hashable, count: int | None) -> int:
        with self._lock:
            waiting = self._sleepers.get(chan)
            if not waiting:
                return 0
            woken = waiting if count is None else waiting[:count]
            rest = [] if count is None else waiting[count:]
            if rest:
                self._sleepers[chan] = rest
            else:
                del self._sleepers[chan]
        for event in woken:
            event.set()
        return len(woken)


_sleepq = _SleepQueue()


def sleep(chan: Hashable, timeout: float | None = None, lock: Any = None) -> bool:
    """Sleep on `chan` until wakeup(chan), for at most `timeout` seconds (tsleep/msleep(9)).

    Releases the device lock this operation holds and `lock` (a Mutex, or any
    lock with acquire/release) while asleep, and retakes both, the device lock
    first, before returning.  Returns True when woken, False on timeout.
    Raises OSError(EAGAIN) at once for an O_NONBLOCK caller, OSError(EINTR) when
    the caller is interrupted by a signal, OSError(ENXIO) when the device is
    destroyed under the sleeper (or its module unloads, in a kthread).  Like any
    sleeper, re-check the condition after.
    """
    td = curthread() or Thread()
    if td.nonblock:
        raise OSError(errno.EAGAIN, "operation would block", None)
    outer = td.lock
    inner = lock if lock is not outer else None
    event = threading.Event()
    td._wait = event
    _sleepq.add(chan, event)
    try:
        if td.interrupted:
            raise OSError(td.interrupted, "sleep interrupted", None)
        if td.before_block is not None:
            td.before_block()
        if inner is not None:
            inner.release()
        if outer is not None:
            outer.release()
        try:
            woken = event.wait(timeout)
        finally:
            if outer is not None:
                outer.acquire()
            if inner is not None:
                inner.acquire()
    finally:
        _sleepq.remove(chan, event)
        td._wait = None
    if td.interrupted:
        raise OSError(td.interrupted, "sleep interrupted", None)
    return woken


def wakeup(chan: Hashable) -> int:
    """Wake every thread sleeping on `chan`; returns how many."""
    return _sleepq.wake(chan, None)


def wakeup_one(chan: Hashable) -> int:
    """Wake the longest sleeper on `chan`."""
    return _sleepq.wake(chan, 1)


class SelInfo:
    """struct selinfo: the pollers waiting on one condition of a device."""

    __slots__ = ("_pollers", "_lock")

    def __init__(self) -> None:
        self._pollers: list[Poller] = []
        self._lock = threading.Lock()

    def record(self, poller: Poller) -> None:
        with self._lock:
            if poller not in self._pollers:
                self._pollers.append(poller)

    def wake(self) -> None:
        with self._lock:
            pollers, self._pollers = self._pollers, []
        for poller in pollers:
            poller.notify()


def selrecord(sel: SelInfo) -> None:
    """From a poll method that found nothing ready: wake this poller at selwakeup(sel)."""
    td = curthread()
    if td is not None and td.poller is not None:
        sel.record(td.poller)


def selwakeup(sel: SelInfo) -> None:
    """Tell every poller recorded on `sel` that the device may be ready now."""
    sel.wake()
