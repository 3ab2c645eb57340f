"""membuf: a resizable buffer compatible with libfuse's fioc device, with a malloc limit."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterator

import pytest

from pykld import _IO, _IOR, _IOW, Kernel
from pykld.kernel.fd import SimFile, SimMemory

DEV = "/dev/membuf"
SIZE_T = struct.Struct("=Q")
RW_ARG = struct.Struct("=qQQQQ")  # off_t offset; void *buf; size_t size, prev_size, new_size
FIOC_GET_SIZE = 0x80084500
FIOC_SET_SIZE = 0x40084501
FIOC_READ = 0x4502
FIOC_WRITE = 0x4503


@pytest.fixture
def membuf(kernel: Kernel, example: Callable[[str], str]) -> Kernel:
    kernel.kldload(example("membuf"))
    return kernel


@pytest.fixture
def f(membuf: Kernel) -> Iterator[SimFile]:
    file = membuf.open(DEV, os.O_RDWR)
    yield file
    file.close()


def size_of(f: SimFile) -> int:
    out = f.ioctl(FIOC_GET_SIZE).data
    assert isinstance(out, bytes) and len(out) == 8
    return int(SIZE_T.unpack(out)[0])


def set_size(f: SimFile, size: int) -> int:
    return f.ioctl(FIOC_SET_SIZE, SIZE_T.pack(size)).result


def errno_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(OSError) as excinfo:
        call()
    return excinfo.value.errno


def test_fioc_numbers_are_libfuse_s() -> None:
    assert (_IOR("E", 0, 8), _IOW("E", 1, 8), _IO("E", 2), _IO("E", 3)) == (
        FIOC_GET_SIZE, FIOC_SET_SIZE, FIOC_READ, FIOC_WRITE)


def test_starts_empty(f: SimFile) -> None:
    assert size_of(f) == 0
    assert f.read() == b""


def test_write_then_read_back(membuf: Kernel, f: SimFile) -> None:
    assert f.write(b"hello world") == 11
    with membuf.open(DEV) as g:
        assert g.read() == b"hello world"
    assert f.read() == b""  # f's position is at the end


def test_pwrite_past_end_grows_with_zeros(f: SimFile) -> None:
    f.write(b"abc")
    assert f.pwrite(b"XY", 6) == 2
    assert size_of(f) == 8
    assert f.pread(100, 0) == b"abc\0\0\0XY"


def test_pwrite_inside_overwrites_without_growing(f: SimFile) -> None:
    f.write(b"0123456789")
    f.pwrite(b"ab", 3)
    assert f.pread(100, 0) == b"012ab56789"
    assert size_of(f) == 10


@pytest.mark.parametrize(("size", "offset", "expected"),
                         [(3, 0, b"012"), (4, 5, b"5678"), (100, 8, b"89"), (5, 10, b""), (5, 99, b"")])
def test_pread_at_offsets(f: SimFile, size: int, offset: int, expected: bytes) -> None:
    f.write(b"0123456789")
    assert f.pread(size, offset) == expected


def test_set_size_shrinks_and_grows(f: SimFile) -> None:
    f.write(b"0123456789")
    assert set_size(f, 4) == 0
    assert size_of(f) == 4
    assert f.pread(100, 0) == b"0123"
    set_size(f, 6)
    assert f.pread(100, 0) == b"0123\0\0"
    set_size(f, 0)
    assert f.pread(100, 0) == b""


def test_set_size_with_a_short_argument_is_efault(f: SimFile) -> None:
    assert errno_of(lambda: f.ioctl(FIOC_SET_SIZE, b"\x01\x00")) == errno.EFAULT
    assert size_of(f) == 0


def test_unknown_ioctl_is_enotty(f: SimFile) -> None:
    for cmd in (_IO("E", 9), _IOR("E", 0, 4), _IOW("X", 1, 8), 0):
        assert errno_of(lambda cmd=cmd: f.ioctl(cmd, bytes(8))) == errno.ENOTTY


def test_negative_offsets_and_sizes_are_einval(f: SimFile) -> None:
    f.write(b"data")
    assert errno_of(lambda: f.pread(1, -1)) == errno.EINVAL
    assert errno_of(lambda: f.pwrite(b"x", -5)) == errno.EINVAL
    assert errno_of(lambda: f.read(-1)) == errno.EINVAL
    assert errno_of(lambda: f.seek(-1)) == errno.EINVAL
    assert f.pread(100, 0) == b"data"


def test_size_malloc_type_is_accounted(membuf: Kernel, f: SimFile) -> None:
    f.write(b"x" * 1000)
    (stat,) = [s for s in membuf.malloc_stats() if s.name == "membuf"]
    assert stat.inuse == 1000
    assert stat.limit == 64 << 20


CONTENT = bytes(range(250)) * 4


@pytest.fixture
def small(kernel: Kernel, example: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> Iterator[SimFile]:
    """membuf loaded with a 1024-byte limit, holding 1000 bytes."""
    monkeypatch.setenv("PYKLD_MEMBUF_LIMIT", "1024")  # read when the module is imported
    kernel.kldload(example("membuf"))
    file = kernel.open(DEV, os.O_RDWR)
    file.write(CONTENT)
    yield file
    file.close()


def test_growth_past_limit_is_enomem_and_unchanged(kernel: Kernel, small: SimFile) -> None:
    assert errno_of(lambda: small.pwrite(b"y" * 100, 1000)) == errno.ENOMEM
    assert errno_of(lambda: small.pwrite(b"z", 1 << 40)) == errno.ENOMEM
    assert errno_of(lambda: small.write(b"w" * 2000)) == errno.ENOMEM
    assert errno_of(lambda: set_size(small, 1025)) == errno.ENOMEM
    assert errno_of(lambda: set_size(small, 2**64 - 1)) == errno.ENOMEM  # (size_t)-1
    assert size_of(small) == 1000
    assert small.pread(2000, 0) == CONTENT
    (stat,) = kernel.malloc_stats()
    assert (stat.inuse, stat.limit, stat.failures) == (1000, 1024, 5)
    # Up to the limit still works.
    assert small.pwrite(b"end", 1021) == 3
    assert size_of(small) == 1024


def test_failed_growth_is_an_error_not_a_fault(kernel: Kernel, small: SimFile) -> None:
    with pytest.raises(OSError):
        small.pwrite(b"y" * 100, 1000)
    stats = kernel.lookup(DEV).stats
    assert (stats.errors, stats.faults) == (1, 0)
    assert not any("Traceback" in line for line in kernel.dmesg())


# -- FIOC_READ / FIOC_WRITE through caller pointers ---------------------------------


def rw_arg(mem: SimMemory, addr: int) -> tuple[int, int, int, int, int]:
    return RW_ARG.unpack(mem.read(addr, RW_ARG.size))


def test_fioc_write_and_read_through_pointers(f: SimFile) -> None:
    f.write(b"0123456789")
    mem = SimMemory()
    src = mem.alloc(b"WXYZ")
    arg = mem.alloc(RW_ARG.pack(8, src, 4, 0, 0))
    assert f.ioctl(FIOC_WRITE, arg, memory=mem).result == 4
    assert rw_arg(mem, arg) == (8, src, 4, 10, 12)  # prev_size and new_size written back
    assert f.pread(100, 0) == b"01234567WXYZ"

    dst = mem.alloc(6)
    arg2 = mem.alloc(RW_ARG.pack(3, dst, 6, 0, 0))
    assert f.ioctl(FIOC_READ, arg2, memory=mem).result == 6
    assert mem.read(dst, 6) == b"34567W"
    assert rw_arg(mem, arg2) == (3, dst, 6, 12, 12)


def test_fioc_read_is_short_at_the_end(f: SimFile) -> None:
    f.write(b"abc")
    mem = SimMemory()
    dst = mem.alloc(b"\xee" * 8)
    arg = mem.alloc(RW_ARG.pack(1, dst, 8, 0, 0))
    assert f.ioctl(FIOC_READ, arg, memory=mem).result == 2
    assert mem.read(dst, 8) == b"bc" + b"\xee" * 6
    arg = mem.alloc(RW_ARG.pack(50, dst, 8, 0, 0))
    assert f.ioctl(FIOC_READ, arg, memory=mem).result == 0  # past the end: EOF


def test_fioc_write_past_end_grows(f: SimFile) -> None:
    mem = SimMemory()
    src = mem.alloc(b"hi")
    arg = mem.alloc(RW_ARG.pack(4, src, 2, 0, 0))
    assert f.ioctl(FIOC_WRITE, arg, memory=mem).result == 2
    assert f.pread(100, 0) == b"\0\0\0\0hi"
    assert rw_arg(mem, arg)[3:] == (0, 6)


def test_fioc_bad_pointers_are_efault(f: SimFile) -> None:
    f.write(b"keep")
    mem = SimMemory()
    assert errno_of(lambda: f.ioctl(FIOC_READ, 0xDEAD0000, memory=mem)) == errno.EFAULT
    assert errno_of(lambda: f.ioctl(FIOC_WRITE, 0, memory=mem)) == errno.EFAULT
    bad_buf = mem.alloc(RW_ARG.pack(0, 0xBAD000, 4, 0, 0))
    assert errno_of(lambda: f.ioctl(FIOC_WRITE, bad_buf, memory=mem)) == errno.EFAULT
    assert errno_of(lambda: f.ioctl(FIOC_READ, bad_buf, memory=mem)) == errno.EFAULT
    small_buf = mem.alloc(2)
    overrun = mem.alloc(RW_ARG.pack(0, small_buf, 4, 0, 0))  # 4 bytes into a 2-byte block
    assert errno_of(lambda: f.ioctl(FIOC_WRITE, overrun, memory=mem)) == errno.EFAULT
    assert f.pread(100, 0) == b"keep"


def test_fioc_negative_offset_is_einval(f: SimFile) -> None:
    mem = SimMemory()
    buf = mem.alloc(4)
    arg = mem.alloc(RW_ARG.pack(-1, buf, 4, 0, 0))
    assert errno_of(lambda: f.ioctl(FIOC_READ, arg, memory=mem)) == errno.EINVAL
    assert errno_of(lambda: f.ioctl(FIOC_WRITE, arg, memory=mem)) == errno.EINVAL


def test_fioc_write_past_limit_is_enomem(small: SimFile) -> None:
    mem = SimMemory()
    src = mem.alloc(b"x" * 100)
    arg = mem.alloc(RW_ARG.pack(1000, src, 100, 0, 0))
    assert errno_of(lambda: small.ioctl(FIOC_WRITE, arg, memory=mem)) == errno.ENOMEM
    assert small.pread(2000, 0) == CONTENT
    assert rw_arg(mem, arg) == (1000, src, 100, 0, 0)  # nothing written back on failure


def test_fioc_pointer_ioctls_without_memory_fail_cleanly(membuf: Kernel, f: SimFile) -> None:
    for cmd in (FIOC_READ, FIOC_WRITE):
        assert errno_of(lambda cmd=cmd: f.ioctl(cmd, 0x10000)) == errno.EOPNOTSUPP
    assert membuf.lookup(DEV).stats.faults == 0
