"""callout(9): run a function of a module once, some seconds from now.

One softclock thread per kernel runs every due callout in turn, with the
callout's module as curthread (printf reaches dmesg, make_dev works), its
mutex held when it was made with callout_init_mtx, and its faults contained:
a traceback in dmesg, and the module keeps working.  A callout must not
sleep; work that blocks belongs in a task or a kthread.  The thread exists
only while callouts are pending.

callout_stop() cancels a pending call; callout_drain() also waits for a call
already running.  With a mutex, a callout stopped while holding that mutex
never runs afterwards (the softclock checks under the mutex), as FreeBSD
guarantees for callout_init_mtx.  At unload the kernel drains whatever
callouts the module left.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pykld.kernel.sched import Thread, curthread, enter, leave

if TYPE_CHECKING:
    from pykld.kernel.kernel import Kernel
    from pykld.kernel.modules import LoadedModule
    from pykld.kernel.mutex import Mutex

DRAIN_TIMEOUT = 5.0  # seconds callout_drain waits for a running call


def module_context(what: str) -> tuple[Kernel, LoadedModule | None]:
    """The kernel and module of the code running now; a RuntimeError outside any."""
    td = curthread()
    if td is None or td.kernel is None:
        raise RuntimeError(f"{what}() outside a module event, device operation or module thread")
    return td.kernel, td.module


class Callout:
    """struct callout: made by callout_init() or callout_init_mtx(mtx) in module code."""

    def __init__(self, mtx: Mutex | None = None) -> None:
        self.kernel, self.module = module_context("callout_init")
        self.mtx = mtx
        self._generation = 0  # bumped by every reset and stop: older queue entries are stale
        self._pending = False
        self._running = False
        self._runner: int | None = None  # the thread running the function now
        self._fn: Callable[..., Any] | None = None
        self._args: tuple[Any, ...] = ()
        if self.module is not None:
            self.module.callouts.append(self)

    def reset(self, seconds: float, fn: Callable[..., Any], *args: Any) -> bool:
        """callout_reset(9): call fn(*args) in `seconds`; True when a pending call was replaced."""
        clock = self.kernel.softclock
        with clock.cond:
            was = self._pending
            self._generation += 1
            self._pending = True
            self._fn, self._args = fn, args
            clock.schedule(time.monotonic() + max(0.0, seconds), self, self._generation)
        return was

    def stop(self) -> bool:
        """callout_stop(9): cancel the pending call; True when one was pending."""
        with self.kernel.softclock.cond:
            was = self._pending
            self._pending = False
            self._generation += 1
        return was

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> bool:
        """callout_drain(9): stop, and wait for a call in progress to return (not when
        called from the callout itself).  Says so in dmesg when the wait gives up."""
        was = self.stop()
        clock = self.kernel.softclock
        with clock.cond:
            if self._runner == threading.get_ident():
                return was
            if not clock.cond.wait_for(lambda: not self._running, timeout):
                name = self.module.name if self.module is not None else "kernel"
                self.kernel.printf("kernel", f"callout_drain: a callout of {name} still runs after {timeout}s")
        return was

    def pending(self) -> bool:
        """callout_pending(9)."""
        return self._pending

    def _fire(self, generation: int) -> None:
        """From the softclock: run the call if it is still the one scheduled."""
        clock = self.kernel.softclock
        if self.mtx is not None:
            self.mtx.lock()
        try:
            with clock.cond:
                if generation != self._generation or not self._pending:
                    return  # stopped or reset meanwhile
                self._pending = False
                self._running = True
                self._runner = threading.get_ident()
                fn, args = self._fn, self._args
            assert fn is not None
            run_as_module(self.kernel, self.module, f"callout {getattr(fn, '__qualname__', fn)}", fn, args)
        finally:
            if self.mtx is not None and self.mtx.owned():
                self.mtx.unlock()
            with clock.cond:
                if self._runner == threading.get_ident():
                    self._running = False
                    self._runner = None
                    clock.cond.notify_all()


def callout_init() -> Callout:
    """callout_init(9) for MPSAFE code: the function runs with no lock held."""
    return Callout()


def callout_init_mtx(mtx: Mutex) -> Callout:
    """callout_init_mtx(9): the function runs with `mtx` held."""
    return Callout(mtx)


def callout_reset(c: Callout, seconds: float, fn: Callable[..., Any], *args: Any) -> bool:
    return c.reset(seconds, fn, *args)


def callout_stop(c: Callout) -> bool:
    return c.stop()


def callout_drain(c: Callout) -> bool:
    return c.drain()


class Softclock:
    """The queue of pending callouts of one kernel and the thread that runs them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._queue: list[tuple[float, int, Callout, int]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, when: float, callout: Callout, generation: int) -> None:
        """With `cond` held."""
        heapq.heappush(self._queue, (when, next(self._order), callout, generation))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pykld-softclock", daemon=True)
            self._thread.start()
        else:
            self.cond.notify_all()

    def _run(self) -> None:
        while True:
            with self.cond:
                while True:
                    if not self._queue:
                        self._thread = None  # idle: the next schedule starts a new one
                        return
                    when, _, callout, generation = self._queue[0]
                    delay = when - time.monotonic()
                    if delay <= 0:
                        heapq.heappop(self._queue)
                        break
                    self.cond.wait(delay)
            callout._fire(generation)


def run_as_module(kernel: Kernel, module: LoadedModule | None, what: str, fn: Callable[..., Any],
                  args: tuple[Any, ...], td: Thread | None = None) -> None:
    """Run module code nobody called (a callout, a task, a kthread) as that module:
    a fault is logged with its traceback, and the module goes on."""
    from pykld.kernel.fault import contain  # fault imports file, which imports this package's sched only

    if td is None:
        td = Thread(kernel, module)
    token = enter(td)
    try:
        contain(kernel, module, what, fn, *args)
    except OSError as exc:
        if not (exc.errno == errno.ENXIO and td.interrupted == errno.ENXIO):  # not the unload's own stop
            kernel.printf(module.name if module is not None else "kernel", f"{what} failed: {exc}")
    finally:
        leave(token)
