"""Driver-owned activity: callout(9), kthread_add(9), taskqueue(9) and mutex(9).

Each runs as its module (printf reaches dmesg, make_dev works), faults are
contained (traceback in dmesg, the module keeps working), and an unload
drains what the module left, saying so when a wait gives up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from pykld import Kernel, Mutex, Task
from pykld.kernel import kthread
from pykld.kernel.callout import Callout
from pykld.kernel.sched import Thread, enter, leave

Load = Callable[..., int]


def lines(kernel: Kernel, text: str) -> list[str]:
    return [line for line in kernel.dmesg() if text in line]


CALLOUTS = '''
from pykld import CharacterDevice, Module, callout_drain, callout_init, callout_reset, callout_stop
from pykld import make_dev, printf

class Drv(Module):
    name = "drv"

    def load(self):
        self.c = callout_init()
        self.ran = []

    def say(self, text):
        printf(text)
        self.ran.append(text)

    def crash(self):
        raise ZeroDivisionError("in a callout")

    def publish(self):
        make_dev(CharacterDevice(), "fromcallout")
        self.ran.append("published")
'''


def in_module(kernel: Kernel, fn: Callable[[], object]) -> object:
    """Run fn as module drv's code, as its events and operations run."""
    token = enter(Thread(kernel, kernel.module("drv")))
    try:
        return fn()
    finally:
        leave(token)


def module_of(kernel: Kernel, name: str = "drv"):  # type: ignore[no-untyped-def]
    return kernel.module(name).instance


def test_callout_runs_as_the_module(kernel: Kernel, load_driver: Load, wait_until) -> None:
    load_driver(CALLOUTS)
    drv = module_of(kernel)
    drv.c.reset(0.01, drv.say, "tick from a callout")
    wait_until(lambda: drv.ran)
    assert lines(kernel, "drv: tick from a callout")
    drv.c.reset(0, drv.publish)
    wait_until(lambda: "published" in drv.ran)
    assert kernel.lookup("/dev/fromcallout").module is kernel.module("drv")


def test_callout_fault_is_contained(kernel: Kernel, load_driver: Load, wait_until) -> None:
    load_driver(CALLOUTS)
    drv = module_of(kernel)
    drv.c.reset(0, drv.crash)
    wait_until(lambda: lines(kernel, "ZeroDivisionError"))
    assert lines(kernel, "Traceback")
    drv.c.reset(0, drv.say, "still working")  # the same callout, the softclock too
    wait_until(lambda: drv.ran == ["still working"])


def test_callout_stop_cancels_and_reset_replaces(kernel: Kernel, load_driver: Load, wait_until) -> None:
    load_driver(CALLOUTS)
    drv = module_of(kernel)
    assert drv.c.reset(30, drv.say, "never") is False
    assert drv.c.pending()
    assert drv.c.reset(0.01, drv.say, "replaced") is True
    wait_until(lambda: drv.ran)
    assert drv.ran == ["replaced"]
    drv.c.reset(30, drv.say, "cancelled")
    assert drv.c.stop() is True
    assert not drv.c.pending() and drv.c.stop() is False


def test_callout_drain_waits_for_a_running_call(kernel: Kernel, load_driver: Load, wait_until) -> None:
    load_driver(CALLOUTS)
    drv = module_of(kernel)
    inside, release = threading.Event(), threading.Event()
    drv.c.reset(0, lambda: (inside.set(), release.wait(5), drv.ran.append("done")))
    assert inside.wait(5)
    threading.Timer(0.05, release.set).start()
    drv.c.drain()
    assert drv.ran == ["done"]  # drain returned only after the call did


def test_unload_drains_a_pending_callout(kernel: Kernel, load_driver: Load) -> None:
    load_driver(CALLOUTS)
    drv = module_of(kernel)
    ran = threading.Event()
    drv.c.reset(0.05, ran.set)
    kernel.kldunload("drv")
    assert not ran.wait(0.2)  # the module is gone: its callout never runs


def test_callout_with_a_mutex_runs_holding_it(kernel: Kernel, load_driver: Load, wait_until) -> None:
    load_driver(CALLOUTS)
    mtx = Mutex("m")
    c = in_module(kernel, lambda: Callout(mtx))
    assert isinstance(c, Callout)
    held: list[bool] = []
    with mtx:
        c.reset(0, lambda: held.append(mtx.owned()))
        assert c.stop()  # stopped while holding its mutex: it must never run
    c.reset(0, lambda: held.append(mtx.owned()))
    wait_until(lambda: held)
    assert held == [True]


KTHREADS = '''
import threading
from pykld import CharacterDevice, Module, kthread_add, make_dev, printf, sleep, wakeup

class Drv(Module):
    name = "drv"

    def load(self):
        self.stuck = threading.Event()
        self.log = []

    def worker(self):
        printf("kthread says hello")
        make_dev(CharacterDevice(), "fromkthread")
        while True:
            sleep(self)  # ends with ENXIO when the module unloads

    def crash(self):
        raise KeyError("in a kthread")

    def stubborn(self):
        self.stuck.wait(30)  # not a sleep(): unload cannot interrupt it
'''


def test_kthread_runs_as_the_module_and_unload_ends_it(kernel: Kernel, load_driver: Load,
                                                        wait_until) -> None:
    load_driver(KTHREADS)
    drv = module_of(kernel)
    kt = in_module(kernel, lambda: kthread.kthread_add(drv.worker))
    assert isinstance(kt, kthread.KThread)
    wait_until(lambda: lines(kernel, "drv: kthread says hello"))
    wait_until(lambda: kernel.devfs.lookup("fromkthread") is not None)
    kernel.kldunload("drv")
    assert not kt.alive  # the unload waited for it
    assert not lines(kernel, "Still")
    assert not lines(kernel, "failed")  # ending its sleep was the unload's doing, not a failure


def test_kthread_fault_is_contained(kernel: Kernel, load_driver: Load, wait_until) -> None:
    load_driver(KTHREADS)
    drv = module_of(kernel)
    in_module(kernel, lambda: kthread.kthread_add(drv.crash))
    wait_until(lambda: lines(kernel, "KeyError"))
    assert lines(kernel, "fault in kthread crash")
    kernel.kldunload("drv")  # the module kept working: it unloads cleanly


def test_unload_says_when_a_kthread_does_not_end(kernel: Kernel, load_driver: Load,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kthread, "DRAIN_TIMEOUT", 0.1)
    load_driver(KTHREADS)
    drv = module_of(kernel)
    kt = in_module(kernel, lambda: kthread.kthread_add(drv.stubborn))
    try:
        kernel.kldunload("drv")
        assert lines(kernel, "kernel: Still 1 threads in drv: stubborn")
    finally:
        drv.stuck.set()
        assert isinstance(kt, kthread.KThread) and kt.join(5)


TASKS = '''
from pykld import Module, Task, printf, taskqueue_create

class Drv(Module):
    name = "drv"

    def load(self):
        self.tq = taskqueue_create("drv")
        self.done = []
        self.task = Task(self.work, "a")

    def work(self, what):
        printf(f"task {what}")
        self.done.append(what)
'''


def test_tasks_run_in_order_as_the_module(kernel: Kernel, load_driver: Load, wait_until) -> None:
    load_driver(TASKS)
    drv = module_of(kernel)
    gate = threading.Event()
    drv.tq.enqueue(Task(gate.wait, 5))
    drv.tq.enqueue(drv.task)
    drv.tq.enqueue(drv.task)  # already queued: runs once
    drv.tq.enqueue(Task(drv.work, "b"))
    assert drv.task.pending == 2
    gate.set()
    assert drv.tq.drain_all()
    assert drv.done == ["a", "b"]
    assert lines(kernel, "drv: task a")


def test_a_cancelled_task_does_not_run(kernel: Kernel, load_driver: Load) -> None:
    load_driver(TASKS)
    drv = module_of(kernel)
    gate = threading.Event()
    blocker = Task(gate.wait, 5)
    drv.tq.enqueue(blocker)
    drv.tq.enqueue(drv.task)
    assert drv.tq.cancel(drv.task) is True  # queued, not running: taken off
    gate.set()
    assert drv.tq.drain_all()
    assert drv.done == [] and drv.task.pending == 0


def test_task_fault_is_contained_and_unload_runs_what_is_queued(kernel: Kernel, load_driver: Load) -> None:
    load_driver(TASKS)
    drv = module_of(kernel)
    gate = threading.Event()
    drv.tq.enqueue(Task(lambda: 1 / 0))
    drv.tq.enqueue(Task(gate.wait, 5))
    drv.tq.enqueue(Task(drv.work, "late"))
    threading.Timer(0.05, gate.set).start()
    kernel.kldunload("drv")
    assert drv.done == ["late"]  # the fault did not stop the queue; the unload waited for it
    assert lines(kernel, "ZeroDivisionError")


def test_mutex_checks() -> None:
    mtx = Mutex("m")
    mtx.assert_not_owned()
    with pytest.raises(AssertionError):
        mtx.assert_owned()
    with mtx:
        mtx.assert_owned()
        assert mtx.owned()
        with pytest.raises(RuntimeError, match="recursed"):
            mtx.lock()
        other: list[bool] = []
        t = threading.Thread(target=lambda: other.append(mtx.owned() or mtx.trylock()))
        t.start()
        t.join(5)
        assert other == [False]  # held here, so not owned there and not free
    with pytest.raises(RuntimeError, match="does not own"):
        mtx.unlock()
    assert mtx.trylock()
    mtx.unlock()


def test_outside_a_module_the_async_kpi_says_so() -> None:
    from pykld import callout_init, kthread_add, taskqueue_create

    for call in (callout_init, lambda: kthread_add(print), taskqueue_create):
        with pytest.raises(RuntimeError, match="outside a module"):
            call()


def test_a_stopped_callout_reset_later_runs_on_the_new_schedule(kernel: Kernel, load_driver: Load) -> None:
    load_driver(CALLOUTS)
    drv = module_of(kernel)
    drv.c.reset(0.02, drv.say, "old")
    drv.c.stop()
    drv.c.reset(30, drv.say, "new")  # the old entry, still queued, must not fire it
    threading.Event().wait(0.15)
    assert drv.ran == []
    drv.c.stop()


def test_callout_drain_says_when_it_gives_up(kernel: Kernel, load_driver: Load) -> None:
    load_driver(CALLOUTS)
    drv = module_of(kernel)
    inside, release = threading.Event(), threading.Event()
    drv.c.reset(0, lambda: (inside.set(), release.wait(5)))
    assert inside.wait(5)
    try:
        drv.c.drain(0.05)
        assert lines(kernel, "callout_drain: a callout of drv still runs")
    finally:
        release.set()


def test_an_ended_kthread_leaves_the_modules_list(kernel: Kernel, load_driver: Load) -> None:
    load_driver(KTHREADS)
    kt = in_module(kernel, lambda: kthread.kthread_add(lambda: None, name="brief"))
    assert isinstance(kt, kthread.KThread) and kt.join(5)
    assert kernel.module("drv").kthreads == []
