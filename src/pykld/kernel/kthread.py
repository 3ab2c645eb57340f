"""kthread_add(9) and taskqueue(9): a module's own threads and deferred work.

Both run with the module as curthread (printf reaches dmesg, make_dev works,
sleep() can be interrupted) and with faults contained: a traceback in dmesg,
and the module keeps working.  Unlike a callout they may sleep.

A kthread ends when its function returns.  At unload, after the module's
UNLOAD, the kernel drains what the module left: it interrupts the sleeps of
its kthreads (sleep raises ENXIO, as on a destroyed device), lets its task
queues finish the tasks queued, and waits for all of them, saying so in dmesg
when a wait gives up ("Still N threads in MODULE", as kern_conf's drain does).
"""

from __future__ import annotations

import errno
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pykld.kernel.callout import module_context, run_as_module
from pykld.kernel.sched import Thread

if TYPE_CHECKING:
    from pykld.kernel.kernel import Kernel
    from pykld.kernel.modules import LoadedModule

DRAIN_TIMEOUT = 5.0  # seconds an unload waits for a module's threads


class KThread:
    """A module's thread (struct thread of kthread_add)."""

    def __init__(self, kernel: Kernel, module: LoadedModule | None, fn: Callable[..., Any],
                 args: tuple[Any, ...], name: str) -> None:
        self.kernel = kernel
        self.module = module
        self.name = name
        self.td = Thread(kernel, module)
        self._fn, self._args = fn, args
        self.thread = threading.Thread(target=self._run, name=f"pykld-{name}", daemon=True)

    def _run(self) -> None:
        try:
            run_as_module(self.kernel, self.module, f"kthread {self.name}", self._fn, self._args, self.td)
        finally:
            if self.module is not None:
                with self.module.activity_lock:
                    if self in self.module.kthreads:
                        self.module.kthreads.remove(self)

    def stop(self) -> None:
        """Interrupt its sleeps for good: the module is going away."""
        self.td.interrupt(errno.ENXIO)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for it to end; True when it did."""
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()


def kthread_add(fn: Callable[..., Any], *args: Any, name: str | None = None) -> KThread:
    """kthread_add(9): run fn(*args) in a new thread of the calling module."""
    kernel, module = module_context("kthread_add")
    kt = KThread(kernel, module, fn, args, name or str(getattr(fn, "__name__", "kthread")))
    if module is not None:
        with module.activity_lock:
            module.kthreads.append(kt)
    kt.thread.start()
    return kt


class Task:
    """struct task (TASK_INIT): fn(*args), queued at most once at a time."""

    __slots__ = ("fn", "args", "pending")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args
        self.pending = 0  # enqueues since it last started (FreeBSD's ta_pending)


class TaskQueue:
    """A queue of tasks and the module thread that runs them, in order (taskqueue_create)."""

    def __init__(self, name: str = "taskq") -> None:
        self.kernel, self.module = module_context("taskqueue_create")
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[Task] = deque()
        self._running: Task | None = None
        self._freed = False
        self._worker: KThread | None = None
        if self.module is not None:
            with self.module.activity_lock:
                self.module.taskqueues.append(self)

    def enqueue(self, task: Task) -> None:
        """taskqueue_enqueue(9): run `task` soon; a task already queued is not queued twice."""
        with self._cond:
            if self._freed:
                raise OSError(errno.ENXIO, f"taskqueue {self.name} is freed", None)
            if task in self._queue:
                task.pending += 1
                return
            task.pending = 1
            self._queue.append(task)
            if self._worker is None or not self._worker.alive:
                self._worker = KThread(self.kernel, self.module, self._work, (), f"taskq-{self.name}")
                self._worker.thread.start()
            self._cond.notify()

    def cancel(self, task: Task) -> bool:
        """taskqueue_cancel(9): take a task off the queue; False when it is running."""
        with self._cond:
            if task in self._queue:
                self._queue.remove(task)
                task.pending = 0
            return self._running is not task

    def drain(self, task: Task, timeout: float = DRAIN_TIMEOUT) -> bool:
        """taskqueue_drain(9): wait until `task` is neither queued nor running."""
        with self._cond:
            return self._cond.wait_for(lambda: task not in self._queue and self._running is not task, timeout)

    def drain_all(self, timeout: float = DRAIN_TIMEOUT) -> bool:
        """taskqueue_drain_all(9): wait until the queue is empty and idle."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._running is None, timeout)

    def free(self, timeout: float = DRAIN_TIMEOUT) -> bool:
        """taskqueue_free(9): run what is queued, then end the worker.  False (and a
        line in dmesg) when the worker did not end in time."""
        with self._cond:
            self._freed = True
            self._cond.notify_all()
            worker = self._worker
        ended = worker is None or worker.join(timeout)
        if not ended:
            self.kernel.printf("kernel", f"taskqueue {self.name}: still running after {timeout}s")
        return ended

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._freed:
                        return
                    self._cond.wait()
                task = self._queue.popleft()
                task.pending = 0
                self._running = task
            try:
                run_as_module(self.kernel, self.module, f"task {getattr(task.fn, '__qualname__', task.fn)}",
                              task.fn, task.args)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()


def taskqueue_create(name: str = "taskq") -> TaskQueue:
    return TaskQueue(name)


def taskqueue_enqueue(tq: TaskQueue, task: Task) -> None:
    tq.enqueue(task)


def taskqueue_drain(tq: TaskQueue, task: Task) -> bool:
    return tq.drain(task)


def taskqueue_free(tq: TaskQueue) -> bool:
    return tq.free()


def drain_module(kernel: Kernel, module: LoadedModule, timeout: float | None = None) -> None:
    """At unload: stop the module's callouts, finish its queues, end its kthreads."""
    if timeout is None:
        timeout = DRAIN_TIMEOUT
    for callout in list(module.callouts):
        callout.drain(timeout)
    with module.activity_lock:
        queues = list(module.taskqueues)
        module.taskqueues.clear()
    for tq in queues:
        tq.free(timeout)
    with module.activity_lock:
        kthreads = list(module.kthreads)
    for kt in kthreads:
        kt.stop()
    deadline = time.monotonic() + timeout
    still = [kt for kt in kthreads if not kt.join(max(0.0, deadline - time.monotonic()))]
    if still:
        names = ", ".join(kt.name for kt in still)
        kernel.printf("kernel", f"Still {len(still)} threads in {module.name}: {names}")
