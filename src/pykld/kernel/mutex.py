"""mutex(9): a lock the kernel knows about, so sleep() can drop it and tests can assert on it.

A driver whose state is touched from more than its serialized operations (a
callout, a kthread, a task) guards it with a Mutex.  It is not recursive, as
an MTX_DEF mutex is not: taking it twice from one thread is a driver bug,
reported at once (a fault, EIO for the caller) instead of a silent deadlock.
`sleep(chan, lock=mtx)` releases it while asleep and retakes it after, as
msleep(9) does, together with the device lock of a serialized device.
"""

from __future__ import annotations

import threading
from typing import Any


class Mutex:
    """mtx_init(9): `mtx.lock()`/`mtx.unlock()` or `with mtx:`; `mtx.owned()` is mtx_owned(9)."""

    __slots__ = ("name", "_lock", "_owner")

    def __init__(self, name: str = "mutex") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._owner: int | None = None

    def lock(self) -> None:
        """mtx_lock(9)."""
        me = threading.get_ident()
        if self._owner == me:
            raise RuntimeError(f"mutex {self.name!r} recursed on (it is not recursive)")
        self._lock.acquire()
        self._owner = me

    def trylock(self) -> bool:
        """mtx_trylock(9): take it if free; True when taken."""
        if not self._lock.acquire(False):
            return False
        self._owner = threading.get_ident()
        return True

    def unlock(self) -> None:
        """mtx_unlock(9); unlocking a mutex this thread does not hold is a driver bug."""
        if self._owner != threading.get_ident():
            raise RuntimeError(f"mutex {self.name!r} unlocked by a thread that does not own it")
        self._owner = None
        self._lock.release()

    def owned(self) -> bool:
        """mtx_owned(9): this thread holds it."""
        return self._owner == threading.get_ident()

    def assert_owned(self) -> None:
        """mtx_assert(m, MA_OWNED)."""
        if not self.owned():
            raise AssertionError(f"mutex {self.name!r} not owned")

    def assert_not_owned(self) -> None:
        """mtx_assert(m, MA_NOTOWNED)."""
        if self.owned():
            raise AssertionError(f"mutex {self.name!r} owned")

    # sleep() and the callout code use these names for any lock they drop and retake.
    def acquire(self) -> None:
        self.lock()

    def release(self) -> None:
        self.unlock()

    def __enter__(self) -> Mutex:
        self.lock()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unlock()

    def __repr__(self) -> str:
        return f"<Mutex {self.name}{' owned' if self._owner is not None else ''}>"
