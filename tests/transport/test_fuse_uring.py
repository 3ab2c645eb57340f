"""FUSE over io_uring (transport/uring.py, pykld._loop's Ring): data, interrupts, opens, teardown,
and the selection by PYKLD_FUSE_URING and fuse.enable_uring.

Needs root, /dev/fuse, a kernel with FUSE over io_uring (Linux >= 6.14) and the built
extension; PYKLD_REQUIRE_FUSE_URING=1 turns their absence into a failure.  The kernel's
parameter is global: each test sets what it needs and puts back what it found.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.fuse.abi import Opcode
from pykld.transport import loop, uring
from pykld.transport.fuse import FuseTransport

from .conftest import EXAMPLES, published, require, require_fuse, require_root, wait_for, write_driver
from .test_fuse import READ_WITH_ALARM, SLEEPY

RING_THREADS = "pykld-fuse-ring"


def set_parameter(value: str) -> None:
    with open(uring.PARAMETER, "w") as f:
        f.write(value)


@pytest.fixture
def parameter() -> Iterator[str]:
    """fuse.enable_uring as it was before the test; it is put back afterwards."""
    require_root()
    require_fuse()
    require("FUSE_URING", uring.parameter() is not None, "this kernel has no FUSE over io_uring")
    require("FUSE_URING", uring.extension() is not None, "the extension pykld._loop (its Ring) is not built")
    if loop.choose()[0] is None:  # the suite's python-loop run: a choice, not a missing capability
        pytest.skip("FUSE over io_uring serves with the compiled request loop only")
    found = uring.parameter()
    assert found is not None
    try:
        yield found
    finally:
        set_parameter(found)


def serve(dev_dir: str) -> AbstractContextManager[tuple[Kernel, FuseTransport]]:
    return published(lambda kernel: FuseTransport(kernel, dev_dir, bind=False))


@pytest.fixture
def ring(parameter: str, dev_dir: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Kernel, FuseTransport]]:
    """A kernel served over the rings (fuse.enable_uring=Y, PYKLD_FUSE_URING=auto)."""
    monkeypatch.setenv("PYKLD_FUSE_URING", "auto")
    set_parameter("Y")
    with serve(dev_dir) as served:
        kernel, _ = served
        assert wait_for(lambda: kernel.sysctl("kern.fuse.uring.rings") == uring.possible_cpus(), 5), kernel.dmesg()
        yield served


def requests(kernel: Kernel) -> int:
    value: int = kernel.sysctl("kern.fuse.uring.requests")
    return value


def ring_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith(RING_THREADS)]


@pytest.mark.parametrize("size", [4096, 1 << 20])
def test_pread_pwrite_at_offsets_go_over_the_ring(ring: tuple[Kernel, FuseTransport], size: int) -> None:
    kernel, transport = ring
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    transport.settle()
    fd = os.open(transport.device_path("membuf"), os.O_RDWR)
    try:
        before = requests(kernel)
        blocks = [os.urandom(size) for _ in range(3)]
        offsets = [0, size + 4113, 3 * size + 8193]  # apart, unaligned
        for offset, block in zip(offsets, blocks, strict=True):
            assert os.pwrite(fd, block, offset) == size
        for offset, block in zip(offsets, blocks, strict=True):
            assert os.pread(fd, size, offset) == block
        assert os.pread(fd, 10, offsets[1] - 10) == b"\0" * 10  # the gap before it stayed empty
        assert requests(kernel) - before >= 7  # every pread and pwrite came over a ring
    finally:
        os.close(fd)


def test_the_ring_serves_the_common_requests_in_c(ring: tuple[Kernel, FuseTransport],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """READ, WRITE, OPEN and RELEASE over the ring go through the compiled dispatch: the
    Python answer() (the slower path every ring request took before) never sees them."""
    kernel, transport = ring
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    transport.settle()
    answered: list[int] = []
    python_answer = uring.QueueSession.answer

    def answer(self: uring.QueueSession, view: memoryview, nbytes: int) -> object:
        answered.append(view[4] | view[5] << 8)
        return python_answer(self, view, nbytes)

    monkeypatch.setattr(uring.QueueSession, "answer", answer)
    before = requests(kernel)
    for _ in range(5):
        fd = os.open(transport.device_path("membuf"), os.O_RDWR)
        assert os.pwrite(fd, b"ring", 0) == 4
        assert os.pread(fd, 4, 0) == b"ring"
        os.close(fd)
    assert requests(kernel) - before >= 20
    common = {Opcode.READ, Opcode.WRITE, Opcode.OPEN, Opcode.RELEASE}
    assert not common & set(answered), answered


def test_signal_interrupts_a_read_asleep_in_the_driver_over_the_ring(ring: tuple[Kernel, FuseTransport],
                                                                    tmp_path: Path) -> None:
    kernel, transport = ring
    kernel.kldload(write_driver(tmp_path, "sleepy", SLEEPY))
    transport.settle()
    before = requests(kernel)
    done = subprocess.run([sys.executable, "-c", READ_WITH_ALARM, transport.device_path("sleepy")],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["-1", str(errno.EINTR)], done.stderr
    assert requests(kernel) > before  # the READ itself came over the ring, its INTERRUPT over /dev/fuse


def test_opens_and_closes_over_the_ring(ring: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = ring
    kernel.kldload(str(EXAMPLES / "hello.py"))
    transport.settle()
    path = transport.device_path("rustmodule")
    before = requests(kernel)
    for _ in range(50):
        fd = os.open(path, os.O_RDONLY)
        assert os.read(fd, 100) == b"Default hello message\n"
        os.close(fd)
    assert wait_for(lambda: not kernel.devfs.lookup("rustmodule").active)  # type: ignore[union-attr]
    assert requests(kernel) - before >= 150  # OPEN, READ, RELEASE each time


def test_a_sleeper_does_not_stall_its_rings_other_callers(ring: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = ring
    kernel.kldload(str(EXAMPLES / "fifo.py"))
    kernel.kldload(str(EXAMPLES / "hello.py"))
    transport.settle()
    fifo = os.open(transport.device_path("fifo"), os.O_RDONLY)
    got: list[bytes] = []
    sleeper = threading.Thread(target=lambda: got.append(os.read(fifo, 1)), daemon=True)
    sleeper.start()
    assert wait_for(lambda: len(kernel.devfs.lookup("fifo").active) == 1)  # type: ignore[union-attr]
    hello = os.open(transport.device_path("rustmodule"), os.O_RDONLY)
    for cpu in range(uring.possible_cpus()):  # on every CPU's ring, while the sleeper holds one entry
        os.sched_setaffinity(0, {cpu})
        assert os.pread(hello, 100, 0) == b"Default hello message\n"
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    os.close(hello)
    with open(transport.device_path("fifo"), "wb", buffering=0) as writer:
        writer.write(b"x")
    sleeper.join(10)
    assert got == [b"x"]
    os.close(fifo)


def test_unload_with_an_open_file_and_a_reader_in_the_driver_ends_every_ring_thread(
        parameter: str, dev_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYKLD_FUSE_URING", "auto")
    set_parameter("Y")
    failures: list[int] = []
    with serve(dev_dir) as (kernel, transport):
        kernel.kldload(str(EXAMPLES / "fifo.py"))
        kernel.kldload(str(EXAMPLES / "membuf.py"))
        transport.settle()
        assert wait_for(lambda: kernel.sysctl("kern.fuse.uring.rings") > 0, 5)
        held = os.open(transport.device_path("membuf"), os.O_RDWR)
        assert os.pwrite(held, b"kept", 0) == 4
        fifo = os.open(transport.device_path("fifo"), os.O_RDONLY)

        def read_until_gone() -> None:
            try:
                os.read(fifo, 1)
            except OSError as exc:
                failures.append(exc.errno or 0)

        reader = threading.Thread(target=read_until_gone, daemon=True)
        reader.start()
        assert wait_for(lambda: len(kernel.devfs.lookup("fifo").active) == 1)  # type: ignore[union-attr]
        assert ring_threads()
        started = time.monotonic()
    # published() unloaded every module (force) and stopped the transport here.
    assert time.monotonic() - started < 10
    reader.join(10)
    assert not reader.is_alive()
    assert failures and failures[0] in (errno.ENXIO, errno.ENOTCONN, errno.ECONNABORTED, errno.EINTR)
    assert wait_for(lambda: not ring_threads(), 5), ring_threads()
    with pytest.raises(OSError):
        os.pread(held, 4, 0)
    os.close(held)
    os.close(fifo)


def test_parameter_n_falls_back_to_dev_fuse_and_says_why(parameter: str, dev_dir: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYKLD_FUSE_URING", "auto")
    set_parameter("N")
    with serve(dev_dir) as (kernel, transport):
        kernel.kldload(str(EXAMPLES / "membuf.py"))
        transport.settle()
        fd = os.open(transport.device_path("membuf"), os.O_RDWR)
        assert os.pwrite(fd, b"classic", 100) == 7
        assert os.pread(fd, 7, 100) == b"classic"
        os.close(fd)
        assert kernel.sysctl("kern.fuse.uring.rings") == 0
        assert requests(kernel) == 0
        assert any("fuse.enable_uring is N; serving /dev/fuse" in line for line in kernel.dmesg())
        assert not ring_threads()
    assert uring.parameter() == "N"


def test_off_never_uses_the_ring(parameter: str, dev_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYKLD_FUSE_URING", "off")
    set_parameter("Y")
    with serve(dev_dir) as (kernel, transport):
        kernel.kldload(str(EXAMPLES / "hello.py"))
        transport.settle()
        with open(transport.device_path("rustmodule"), "rb") as device:
            assert device.read() == b"Default hello message\n"
        assert requests(kernel) == 0 and not ring_threads()


def test_enable_sets_the_parameter_says_so_and_leaves_it(parameter: str, dev_dir: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYKLD_FUSE_URING", "enable")
    set_parameter("N")
    with serve(dev_dir) as (kernel, transport):
        kernel.kldload(str(EXAMPLES / "hello.py"))
        transport.settle()
        said = [line for line in kernel.dmesg() if "PYKLD_FUSE_URING=enable" in line]
        assert said and "set fuse.enable_uring to Y (it was N)" in said[0], kernel.dmesg()
        before = requests(kernel)
        with open(transport.device_path("rustmodule"), "rb") as device:
            assert device.read() == b"Default hello message\n"
        assert requests(kernel) > before
    assert uring.parameter() == "Y"  # global: pykld told the user, and restores nothing behind their back
