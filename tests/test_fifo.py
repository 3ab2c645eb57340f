"""fifo: a bounded byte pipe — blocking, O_NONBLOCK, poll, concurrency without loss or duplication."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from pykld import POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM, Kernel
from pykld.kernel.fd import SimFile

DEV = "/dev/fifo"
CAPACITY = 4096


@pytest.fixture
def fifo(kernel: Kernel, example: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> Kernel:
    monkeypatch.delenv("PYKLD_FIFO_CAPACITY", raising=False)
    kernel.kldload(example("fifo"))
    return kernel


@pytest.fixture
def opener(fifo: Kernel) -> Iterator[Callable[..., SimFile]]:
    """open_fifo(flags=O_RDWR) -> a file on /dev/fifo, closed after the test."""
    files: list[SimFile] = []

    def open_fifo(flags: int = os.O_RDWR) -> SimFile:
        files.append(fifo.open(DEV, flags))
        return files[-1]

    yield open_fifo
    for f in files:
        f.close()


def errno_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(OSError) as excinfo:
        call()
    return excinfo.value.errno


def asleep_in_driver(kernel: Kernel, count: int = 1) -> Callable[[], bool]:
    return lambda: len(kernel.lookup(DEV).active) >= count


def test_bytes_come_out_in_order(opener: Callable[..., SimFile]) -> None:
    f = opener()
    f.write(b"hello ")
    f.write(b"world")
    assert f.read(3) == b"hel"
    assert f.read() == b"lo world"


def test_blocking_read_waits_for_a_writer(fifo: Kernel, opener: Callable[..., SimFile], threads,
                                          wait_until) -> None:
    reader, writer = opener(os.O_RDONLY), opener(os.O_WRONLY)
    got = threads.start(lambda: reader.read(100))
    wait_until(asleep_in_driver(fifo))
    time.sleep(0.02)
    assert got.thread.is_alive()  # still waiting: the fifo is empty
    # sleep() released the device lock, so the writer gets in.
    assert writer.write(b"ping") == 4
    threads.join(got)
    assert got.result() == b"ping"


def test_blocking_writer_waits_for_room(fifo: Kernel, opener: Callable[..., SimFile], threads,
                                        wait_until) -> None:
    reader, writer = opener(os.O_RDONLY), opener(os.O_WRONLY)
    writer.write(b"a" * CAPACITY)
    put = threads.start(lambda: writer.write(b"b" * 1000))
    wait_until(asleep_in_driver(fifo))
    time.sleep(0.02)
    assert put.thread.is_alive()
    assert reader.read(CAPACITY) == b"a" * CAPACITY
    threads.join(put)
    assert put.result() == 1000
    assert reader.read(CAPACITY) == b"b" * 1000


def test_nonblocking_read_on_empty_is_eagain(opener: Callable[..., SimFile]) -> None:
    f = opener(os.O_RDWR | os.O_NONBLOCK)
    assert errno_of(f.read) == errno.EAGAIN
    f.write(b"x")
    assert f.read() == b"x"
    assert errno_of(f.read) == errno.EAGAIN


def test_set_blocking_switches_modes(opener: Callable[..., SimFile]) -> None:
    f = opener()
    f.set_blocking(False)
    assert errno_of(f.read) == errno.EAGAIN
    f.set_blocking(True)
    f.write(b"ok")
    assert f.read() == b"ok"


def test_nonblocking_write_partial_then_eagain(opener: Callable[..., SimFile]) -> None:
    f = opener(os.O_RDWR | os.O_NONBLOCK)
    assert f.write(b"x" * (CAPACITY + 1000)) == CAPACITY  # fills midway: the count so far
    assert errno_of(lambda: f.write(b"y")) == errno.EAGAIN  # full from the start: EAGAIN
    assert f.read(100) == b"x" * 100
    assert f.write(b"z" * 500) == 100
    assert len(f.read(2 * CAPACITY)) == CAPACITY


def test_zero_byte_read_and_write_return_at_once(opener: Callable[..., SimFile], threads) -> None:
    f = opener()
    outcome = threads.start(lambda: f.read(0))
    threads.join(outcome, timeout=2)
    assert outcome.result() == b""
    assert f.write(b"") == 0


def test_poll_reports_readiness(opener: Callable[..., SimFile]) -> None:
    f = opener(os.O_RDWR | os.O_NONBLOCK)
    both = POLLIN | POLLOUT
    assert f.poll(both) == POLLOUT  # empty
    assert f.poll(POLLIN) == 0
    f.write(b"data")
    assert f.poll(both) == both
    assert f.poll(POLLRDNORM | POLLWRNORM) == POLLRDNORM | POLLWRNORM
    f.write(b"x" * CAPACITY)
    assert f.poll(both) == POLLIN  # full
    assert f.poll(POLLOUT) == 0
    f.read(1)
    assert f.poll(POLLOUT) == POLLOUT


def test_poll_timeout_expires(opener: Callable[..., SimFile]) -> None:
    f = opener()
    start = time.monotonic()
    assert f.poll(POLLIN, timeout=0.05) == 0
    assert 0.04 <= time.monotonic() - start < 2


def test_poll_woken_by_writer_from_another_thread(opener: Callable[..., SimFile], threads) -> None:
    reader, writer = opener(os.O_RDONLY), opener(os.O_WRONLY)

    def write_later() -> None:
        time.sleep(0.05)
        writer.write(b"wake")

    put = threads.start(write_later)
    start = time.monotonic()
    assert reader.poll(POLLIN, timeout=5) == POLLIN
    assert time.monotonic() - start < 2  # woken, not timed out
    threads.join(put)
    assert reader.read() == b"wake"


def test_poll_for_room_woken_by_reader(opener: Callable[..., SimFile], threads) -> None:
    reader, writer = opener(os.O_RDONLY), opener(os.O_WRONLY)
    writer.write(b"x" * CAPACITY)

    def read_later() -> bytes:
        time.sleep(0.05)
        return reader.read(10)

    got = threads.start(read_later)
    assert writer.poll(POLLOUT, timeout=5) == POLLOUT
    threads.join(got)


def test_stream_has_no_offsets(opener: Callable[..., SimFile]) -> None:
    f = opener()
    f.write(b"abc")
    assert errno_of(lambda: f.pread(2, 0)) == errno.ESPIPE
    assert errno_of(lambda: f.pwrite(b"x", 0)) == errno.ESPIPE
    assert errno_of(lambda: f.seek(0)) == errno.ESPIPE
    assert f.read() == b"abc"


def test_forced_unload_wakes_blocked_readers_with_enxio(fifo: Kernel, opener: Callable[..., SimFile],
                                                        threads, wait_until) -> None:
    f, g = opener(os.O_RDONLY), opener(os.O_RDONLY)
    blocked = [threads.start(f.read), threads.start(g.read)]
    wait_until(asleep_in_driver(fifo, 2))
    time.sleep(0.02)
    assert errno_of(lambda: fifo.kldunload("fifo")) == errno.EBUSY
    assert all(b.thread.is_alive() for b in blocked)  # a refused unload leaves them asleep
    fifo.kldunload("fifo", force=True)
    threads.join(*blocked)
    for outcome in blocked:
        assert isinstance(outcome.error, OSError) and outcome.error.errno == errno.ENXIO
    assert errno_of(f.read) == errno.ENXIO
    f.close()
    g.close()


def test_forced_unload_wakes_blocked_writer_with_enxio(fifo: Kernel, opener: Callable[..., SimFile],
                                                       threads, wait_until) -> None:
    w = opener(os.O_WRONLY)
    w.write(b"x" * CAPACITY)
    put = threads.start(lambda: w.write(b"more"))
    wait_until(asleep_in_driver(fifo))
    fifo.kldunload("fifo", force=True)
    threads.join(put)
    assert isinstance(put.error, OSError) and put.error.errno == errno.ENXIO


# -- several readers and writers at once ---------------------------------------------

RECORD = 256
WRITERS, READERS = 4, 4
PER_WRITER = 2048  # 4 writers x 2048 records x 256 bytes = 2 MiB
BATCH = 8  # records per write(2)
SENTINEL = 0xFFFF
_HEAD = struct.Struct("<HI")


def record(writer: int, seq: int) -> bytes:
    """A self-checking record: who wrote it, its sequence number, a payload, a CRC."""
    head = _HEAD.pack(writer, seq)
    payload = (hashlib.blake2b(head).digest() * 4)[: RECORD - _HEAD.size - 4]
    body = head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def parse(rec: bytes) -> tuple[int, int]:
    assert len(rec) == RECORD
    body, (crc,) = rec[:-4], struct.unpack("<I", rec[-4:])
    assert zlib.crc32(body) == crc, "corrupted record"
    writer, seq = _HEAD.unpack_from(body)
    assert rec == record(writer, seq)
    return writer, seq


def test_concurrent_readers_and_writers_lose_and_duplicate_nothing(
    fifo: Kernel, opener: Callable[..., SimFile], threads
) -> None:
    # Writes and reads are whole multiples of RECORD and CAPACITY is one too, so the
    # pipe only ever holds whole records and each read returns whole records.
    assert CAPACITY % RECORD == 0

    def write_all(w: int) -> Callable[[], None]:
        def run() -> None:
            f = fifo.open(DEV, os.O_WRONLY)
            with f:
                for start in range(0, PER_WRITER, BATCH):
                    data = b"".join(record(w, s) for s in range(start, start + BATCH))
                    assert f.write(data) == len(data)
        return run

    def read_all() -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        with fifo.open(DEV, os.O_RDONLY) as f:
            while True:
                chunk = f.read(16 * RECORD)
                assert len(chunk) % RECORD == 0 and chunk
                for pos in range(0, len(chunk), RECORD):
                    writer, seq = parse(chunk[pos : pos + RECORD])
                    if writer == SENTINEL:
                        return seen
                    seen.append((writer, seq))

    readers = [threads.start(read_all) for _ in range(READERS)]
    writers = [threads.start(write_all(w)) for w in range(WRITERS)]
    threads.join(*writers, timeout=20)
    for w in writers:
        w.result()

    # Readers stop at a sentinel; feed sentinels until every reader has stopped.
    closer = opener(os.O_WRONLY | os.O_NONBLOCK)
    deadline = time.monotonic() + 10
    while any(r.thread.is_alive() for r in readers) and time.monotonic() < deadline:
        try:
            closer.write(record(SENTINEL, 0))
        except BlockingIOError:
            time.sleep(0.001)
    threads.join(*readers)

    collected = [r.result() for r in readers]
    everything = Counter(item for seen in collected for item in seen)
    expected = Counter((w, s) for w in range(WRITERS) for s in range(PER_WRITER))
    assert everything == expected  # nothing lost, nothing duplicated
    for seen in collected:
        # What one reader saw of one writer came out in the order it was written.
        for w in range(WRITERS):
            seqs = [s for writer, s in seen if writer == w]
            assert seqs == sorted(seqs)
    stats = fifo.lookup(DEV).stats
    assert stats.bytes_written >= WRITERS * PER_WRITER * RECORD
    assert stats.faults == 0


def test_idle_polls_do_not_pile_up_pollers(fifo: Kernel, opener: Callable[..., SimFile]) -> None:
    f = opener(os.O_RDONLY)
    for _ in range(200):
        assert f.poll(POLLIN, timeout=0.0001) == 0
    # The device remembers whom to wake, but not once per poll call.
    assert len(fifo.lookup(DEV).device.readable._pollers) <= 1
    with fifo.open(DEV, os.O_WRONLY) as w:
        w.write(b"x")
    assert f.poll(POLLIN, timeout=1) == POLLIN


def test_forced_unload_wakes_a_blocked_poller(fifo: Kernel, opener: Callable[..., SimFile], threads,
                                             wait_until) -> None:
    f = opener(os.O_RDONLY)
    cdev = fifo.lookup(DEV)
    waiting = threads.start(lambda: f.poll(POLLIN, timeout=4))
    wait_until(lambda: cdev.device.readable._pollers)
    start = time.monotonic()
    fifo.kldunload("fifo", force=True)
    threads.join(waiting)
    # Woken (FreeBSD's seldrain), it finds the device gone rather than waiting out its timeout.
    assert isinstance(waiting.error, OSError) and waiting.error.errno == errno.ENXIO
    assert time.monotonic() - start < 2
