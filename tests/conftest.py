"""Shared fixtures: a fresh in-process kernel, throwaway driver files, bounded waits.

Helpers are fixtures rather than importable names, so this file never competes
with the conftest.py of another test directory for the module name "conftest".
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pykld import Kernel

ROOT = Path(__file__).resolve().parents[1]
JOIN_TIMEOUT = 5.0  # seconds; every wait in the suite is bounded by this


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
