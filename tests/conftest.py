"""Shared fixtures: a fresh in-process kernel, throwaway driver files, bounded waits;
and the backstop behind every test's time limit.

Helpers are fixtures rather than importable names, so this file never competes
with the conftest.py of another test directory for the module name "conftest".
"""

from __future__ import annotations

import faulthandler
import os
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pykld import Kernel

ROOT = Path(__file__).resolve().parents[1]
JOIN_TIMEOUT = 5.0  # seconds; every wait in the suite is bounded by this


# -- time limits -----------------------------------------------------------------------
# pytest-timeout (configured in pyproject.toml) fails a test that outlives its limit and
# prints the stack of every thread; it interrupts the test with SIGALRM.  A signal cannot
# end every wait, though: a system call on a FUSE file waits in the kernel until the
# server answers, whatever the caller's signals, and when the server is this very
# process, stuck, it never does.  So a watchdog follows each test: UNSTICK_AFTER seconds
# past its limit it prints every thread's stack and aborts the FUSE connections mounted
# during the test, which ends those calls (ECONNABORTED) and lets the suite go on; if
# even that does not help, BACKSTOP seconds past the limit it prints the stacks again
# and ends the run, rather than hang for ever.

UNSTICK_AFTER = 5.0
BACKSTOP = 60.0  # longer than a failed test's teardown: its waits are bounded (5 s, 10 s, 5 s)
FUSECTL = Path("/sys/fs/fuse/connections")

_terminal = -1  # the real stderr, which output capture does not redirect


def pytest_configure(config: pytest.Config) -> None:
    global _terminal
    if _terminal < 0:
        _terminal = os.dup(2)  # capture is suspended while plugins are configured


def _limit(item: pytest.Item) -> float:
    """The test's time limit: its timeout marker, else --timeout, else pyproject's."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        return float(marker.kwargs.get("timeout", marker.args[0] if marker.args else 0) or 0)
    value = item.config.getoption("timeout", None) or os.environ.get("PYTEST_TIMEOUT") \
        or item.config.getini("timeout")
    return float(value or 0)


def _fuse_connections() -> set[str]:
    """The fusectl names of the FUSE mounts now (a mount's device number)."""
    names = set()
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            fstype = line.partition(" - ")[2].split()[:1]
            if fstype and fstype[0].startswith("fuse."):
                major, minor = map(int, fields[2].split(":"))
                names.add(str(major << 20 | minor))
    return names


class _Watchdog:
    def __init__(self, item: pytest.Item, limit: float) -> None:
        self.nodeid = item.nodeid
        self.limit = limit
        self.before = _fuse_connections()
        self.done = threading.Event()
        threading.Thread(target=self._watch, name="test-watchdog", daemon=True).start()
        faulthandler.dump_traceback_later(limit + BACKSTOP, exit=True, file=_terminal)

    def _say(self, text: str) -> None:
        os.write(_terminal, f"\n+++ {self.nodeid}: {text}\n".encode())

    def _watch(self) -> None:
        if self.done.wait(self.limit + UNSTICK_AFTER):
            return
        self._say(f"not finished {UNSTICK_AFTER:g} s past its {self.limit:g} s limit (a teardown still "
                  "waiting, or a wait no signal ends); every thread:")
        faulthandler.dump_traceback(_terminal, all_threads=True)
        for name in sorted(_fuse_connections() - self.before):
            try:
                (FUSECTL / name / "abort").write_text("1")
                self._say(f"aborted FUSE connection {name}, mounted during the test")
            except OSError as exc:
                self._say(f"could not abort FUSE connection {name}: {exc.strerror}")

    def stop(self) -> None:
        self.done.set()
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    limit = _limit(item)
    watchdog = _Watchdog(item, limit) if limit > 0 else None
    try:
        yield
    finally:
        if watchdog is not None:
            watchdog.stop()


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    """A fresh kernel; whatever the test left loaded is shut down after it."""
    k = Kernel()
    yield k
    k.shutdown()


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def example() -> Callable[[str], str]:
    """example("hello") -> the path of examples/hello.py."""
    return lambda name: str(ROOT / "examples" / f"{name}.py")


@pytest.fixture
def write_driver(tmp_path: Path) -> Callable[..., str]:
    """write_driver(source, name="drv") -> path of a driver file holding the dedented source."""

    def write(source: str, name: str = "drv") -> str:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return str(path)

    return write


@pytest.fixture
def load_driver(kernel: Kernel, write_driver: Callable[..., str]) -> Callable[..., int]:
    """load_driver(source, name="drv") -> module id: the source written to a file and kldloaded."""

    def load(source: str, name: str = "drv") -> int:
        return kernel.kldload(write_driver(source, name))

    return load


class Threads:
    """Start threads that record their outcome; join them with a bound, never forever."""

    def __init__(self) -> None:
        self.started: list[threading.Thread] = []

    def start(self, target: Callable[[], object]) -> Outcome:
        outcome = Outcome()

        def run() -> None:
            try:
                outcome.value = target()
            except BaseException as exc:  # handed to the test to judge
                outcome.error = exc

        outcome.thread = threading.Thread(target=run, daemon=True)
        self.started.append(outcome.thread)
        outcome.thread.start()
        return outcome

    def join(self, *outcomes: Outcome, timeout: float = JOIN_TIMEOUT) -> None:
        """Join; a thread still alive after `timeout` is a hang and fails the test."""
        deadline = time.monotonic() + timeout
        for outcome in outcomes:
            outcome.thread.join(max(0.0, deadline - time.monotonic()))
        alive = [o.thread.name for o in outcomes if o.thread.is_alive()]
        assert not alive, f"still running after {timeout}s (a hang): {alive}"


class Outcome:
    """What a thread's target returned or raised."""

    thread: threading.Thread
    value: object = None
    error: BaseException | None = None

    def result(self) -> object:
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture
def threads() -> Threads:
    return Threads()


def _wait_until(predicate: Callable[[], bool], timeout: float = JOIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """wait_until(predicate, timeout=5.0): poll until true, fail after the timeout."""
    return _wait_until
