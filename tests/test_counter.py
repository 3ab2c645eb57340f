"""counter: a ticker callout, a Mutex, blocking read, poll and three ioctls, in process."""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable, Iterator

import pytest
from counter_ioctl import CIOCGCOUNT, CIOCRESET, CIOCSINTERVAL, COUNT, INTERVAL

from pykld import Kernel
from pykld.kernel.fd import SimFile

DEV = "/dev/counter"


@pytest.fixture
def counter(kernel: Kernel, example: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> Kernel:
    monkeypatch.setenv("PYKLD_COUNTER_INTERVAL_MS", "0")  # the tests start the ticker themselves
    kernel.kldload(example("counter"))
    return kernel


@pytest.fixture
def f(counter: Kernel) -> Iterator[SimFile]:
    with counter.open(DEV) as file:
        yield file


def count_of(f: SimFile) -> int:
    data = f.ioctl(CIOCGCOUNT).data
    assert data is not None
    return int(COUNT.unpack(data)[0])


def set_interval(f: SimFile, ms: int) -> None:
    assert f.ioctl(CIOCSINTERVAL, INTERVAL.pack(ms)).result == 0


def test_reads_block_until_the_next_tick(f: SimFile, threads, wait_until) -> None:
    reader = threads.start(f.read)
    wait_until(lambda: len(f.file.cdev.active) == 1)  # asleep in the driver
    assert reader.thread.is_alive()
    set_interval(f, 10)
    threads.join(reader)
    assert reader.result() == b"1\n"
    assert f.read() == b"2\n"  # the next one, once it came


def test_each_open_sees_every_change_once(counter: Kernel, f: SimFile, wait_until) -> None:
    with counter.open(DEV) as g:
        set_interval(f, 10)
        wait_until(lambda: count_of(f) >= 1)
        set_interval(f, 0)
        now = count_of(f)
        assert f.read() == g.read() == f"{now}\n".encode()
        f.set_blocking(False)
        with pytest.raises(OSError) as excinfo:
            f.read()  # nothing new since this open read
        assert excinfo.value.errno == errno.EAGAIN


def test_poll_reports_a_new_count(f: SimFile, threads) -> None:
    assert f.poll(select.POLLIN, 0) == 0
    poller = threads.start(lambda: f.poll(select.POLLIN, None))  # only selwakeup ends this wait
    set_interval(f, 10)
    threads.join(poller)
    assert poller.result() == select.POLLIN


def test_reset_counts_from_zero_and_wakes_readers(f: SimFile, threads, wait_until) -> None:
    reader = threads.start(f.read)
    wait_until(lambda: len(f.file.cdev.active) == 1)
    assert f.ioctl(CIOCRESET).result == 0
    threads.join(reader)
    assert reader.result() == b"0\n"


def test_ticker_interval_is_logged(counter: Kernel, f: SimFile) -> None:
    set_interval(f, 250)
    set_interval(f, 0)
    assert any("counter: ticking every 250 ms" in line for line in counter.dmesg())
    assert any("counter: ticker stopped" in line for line in counter.dmesg())


def test_unload_with_a_blocked_reader_and_a_running_ticker(counter: Kernel, threads, wait_until) -> None:
    f = counter.open(DEV, os.O_RDONLY)
    set_interval(f, 1)
    f.read()
    set_interval(f, 0)
    reader = threads.start(f.read)
    wait_until(lambda: len(f.file.cdev.active) == 1)
    set_interval(f, 5)
    counter.kldunload("counter", force=True)
    threads.join(reader)
    f.close()
    assert counter.kldstat() == []
    assert not any("fault" in line or "Still" in line for line in counter.dmesg())
