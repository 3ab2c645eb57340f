"""The CUSE transport's unrestricted-ioctl retry protocol, against a simulated kernel.

No VM needed: a small stand-in for the kernel's fuse_do_ioctl copies the asked-for
caller memory in, resends, and copies the final reply out, as Linux does.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from pykld import Kernel
from pykld.fuse import abi
from pykld.fuse.request import Ioctl, Request
from pykld.kernel.fd import SimMemory
from pykld.transport.cuse import CuseHandler

from .conftest import EXAMPLES, write_driver

FIOC_GET_SIZE = 0x80084500
FIOC_SET_SIZE = 0x40084501
FIOC_READ = 0x4502
FIOC_WRITE = 0x4503
RW_ARG = struct.Struct("=qQQQQ")
IOCTL_OUT = struct.Struct("<IiQiIII")
IOVEC = struct.Struct("<QQ")


def kernel_ioctl(handler: CuseHandler, fh: int, cmd: int, arg: int, memory: SimMemory) -> tuple[int, int]:
    """Run one ioctl(2) the way Linux CUSE does; returns (result, requests sent)."""
    serve_ioctl = handler.handlers()[abi.Opcode.IOCTL]  # what the channel's Session dispatches to
    in_iovs: list[tuple[int, int]] = []
    out_iovs: list[tuple[int, int]] = []
    for requests in range(1, 16):
        data = b"".join(memory.read(addr, length) for addr, length in in_iovs)  # EFAULT here, as the kernel
        args = Ioctl(fh, abi.FUSE_IOCTL_UNRESTRICTED, cmd, arg, len(data),
                     sum(length for _, length in out_iovs), memoryview(data))
        answer = serve_ioctl(Request(abi.Opcode.IOCTL, requests, 1, 0, 0, os.getpid(), args))
        assert isinstance(answer, bytes)
        length, error, _, result, flags, n_in, n_out = IOCTL_OUT.unpack_from(answer)
        assert length == len(answer)
        if error:
            raise OSError(-error, os.strerror(-error))
        if flags & abi.FUSE_IOCTL_RETRY:
            iovs = [IOVEC.unpack_from(answer, IOCTL_OUT.size + 16 * i) for i in range(n_in + n_out)]
            in_iovs, out_iovs = iovs[:n_in], iovs[n_in:]
            continue
        payload = answer[IOCTL_OUT.size :]
        for addr, size in out_iovs:
            chunk, payload = payload[:size], payload[size:]
            if chunk:
                memory.write(addr, chunk)
        return result, requests
    raise AssertionError("the ioctl never finished")


@pytest.fixture
def membuf() -> tuple[Kernel, CuseHandler, int]:
    kernel = Kernel()
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    cdev = kernel.lookup("membuf")
    handler = CuseHandler(kernel, cdev)
    handler.files[7] = kernel.open_cdev(cdev, os.O_RDWR)
    return kernel, handler, 7


def test_sized_commands_take_one_retry(membuf: tuple[Kernel, CuseHandler, int]) -> None:
    _, handler, fh = membuf
    memory = SimMemory()
    size = memory.alloc(struct.pack("Q", 4096))
    assert kernel_ioctl(handler, fh, FIOC_SET_SIZE, size, memory) == (0, 2)
    out = memory.alloc(8)
    assert kernel_ioctl(handler, fh, FIOC_GET_SIZE, out, memory) == (0, 2)
    assert struct.unpack("Q", memory.read(out, 8)) == (4096,)


def test_fioc_write_then_read_through_pointers_in_three_requests(membuf: tuple[Kernel, CuseHandler, int]) -> None:
    _, handler, fh = membuf
    memory = SimMemory()
    source = memory.alloc(b"pointer payload!")
    arg = memory.alloc(RW_ARG.pack(2, source, 16, 0, 0))
    assert kernel_ioctl(handler, fh, FIOC_WRITE, arg, memory) == (16, 3)  # as libfuse's cuse.c needs
    assert RW_ARG.unpack(memory.read(arg, RW_ARG.size))[3:] == (0, 18)  # prev_size, new_size written back
    target = memory.alloc(32)
    arg = memory.alloc(RW_ARG.pack(10, target, 32, 0, 0))
    assert kernel_ioctl(handler, fh, FIOC_READ, arg, memory) == (8, 3)
    assert memory.read(target, 8) == b"payload!"
    assert RW_ARG.unpack(memory.read(arg, RW_ARG.size))[3:] == (18, 18)


def test_bad_pointer_fails_in_the_kernel_and_the_next_call_starts_afresh(
        membuf: tuple[Kernel, CuseHandler, int]) -> None:
    _, handler, fh = membuf
    memory = SimMemory()
    with pytest.raises(OSError) as bad:
        kernel_ioctl(handler, fh, FIOC_READ, 0x10, memory)
    assert bad.value.errno == errno.EFAULT
    out = memory.alloc(8)
    assert kernel_ioctl(handler, fh, FIOC_GET_SIZE, out, memory) == (0, 2)


def test_unknown_command_is_enotty_after_its_argument_arrives(membuf: tuple[Kernel, CuseHandler, int]) -> None:
    _, handler, fh = membuf
    memory = SimMemory()
    with pytest.raises(OSError) as unknown:
        kernel_ioctl(handler, fh, 0x80084563, memory.alloc(8), memory)
    assert unknown.value.errno == errno.ENOTTY


def test_copyin_many_fetches_every_range_in_one_round(tmp_path: Path) -> None:
    from .test_fuse_caller_memory import MIRROR

    kernel = Kernel()
    kernel.kldload(write_driver(tmp_path, "mirror", MIRROR))
    cdev = kernel.lookup("mirror")
    handler = CuseHandler(kernel, cdev)
    handler.files[3] = kernel.open_cdev(cdev, os.O_RDWR)
    memory = SimMemory()
    source, target = memory.alloc(b"two halves"), memory.alloc(10)
    arg = memory.alloc(struct.pack("=QQQ", source, 10, target))
    # the argument, both halves at once, the copyout's out-iovec, the reply
    assert kernel_ioctl(handler, 3, 0x5001, arg, memory) == (10, 4)
    assert memory.read(target, 10) == b"sevlah owt"
    kernel.shutdown()
