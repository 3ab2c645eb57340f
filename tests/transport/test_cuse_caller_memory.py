"""CUSE ioctls that reach the caller's memory directly (process_vm_readv/writev of the
request's pid), against a simulated kernel: no VM needed, the caller is this process.

A real channel serves so (CuseChannel); one request per ioctl, where the retry rounds
take two or three, and a daemon that may not trace its caller falls back to the rounds.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from pykld import Kernel
from pykld.kernel.uaccess import ProcessMemory
from pykld.transport import cuse
from pykld.transport.cuse import CuseHandler

from .conftest import EXAMPLES
from .test_cuse_ioctl_rounds import FIOC_GET_SIZE, FIOC_READ, FIOC_SET_SIZE, FIOC_WRITE, RW_ARG, kernel_ioctl


def ThisProcess() -> ProcessMemory:  # noqa: N802
    """The kernel's side of the caller's memory in the retry rounds: this process's own
    (EFAULT where unmapped, as the kernel's copy)."""
    return ProcessMemory(os.getpid())


@pytest.fixture
def membuf() -> Iterator[tuple[Kernel, CuseHandler, int]]:
    kernel = Kernel()
    kernel.kldload(str(EXAMPLES / "membuf.py"))
    cdev = kernel.lookup("membuf")
    handler = CuseHandler(kernel, cdev, caller_memory=True)
    handler.files[7] = kernel.open_cdev(cdev, os.O_RDWR)
    yield kernel, handler, 7
    kernel.shutdown()


def rw_arg(offset: int, buf: Any, size: int) -> Any:
    return ctypes.create_string_buffer(RW_ARG.pack(offset, ctypes.addressof(buf), size, 0, 0), RW_ARG.size)


def test_pointer_ioctls_take_one_request_each(membuf: tuple[Kernel, CuseHandler, int]) -> None:
    _, handler, fh = membuf
    data = ctypes.create_string_buffer(b"through pointers", 16)
    arg = rw_arg(3, data, 16)
    assert kernel_ioctl(handler, fh, FIOC_WRITE, ctypes.addressof(arg), ThisProcess()) == (16, 1)
    assert RW_ARG.unpack(arg.raw)[3:] == (0, 19)  # prev_size, new_size written back
    back = ctypes.create_string_buffer(8)
    arg = rw_arg(11, back, 8)
    assert kernel_ioctl(handler, fh, FIOC_READ, ctypes.addressof(arg), ThisProcess()) == (8, 1)
    assert back.raw == b"pointers"
    assert RW_ARG.unpack(arg.raw)[3:] == (19, 19)


def test_sized_commands_take_one_request(membuf: tuple[Kernel, CuseHandler, int]) -> None:
    _, handler, fh = membuf
    size = ctypes.create_string_buffer(struct.pack("Q", 4096), 8)
    assert kernel_ioctl(handler, fh, FIOC_SET_SIZE, ctypes.addressof(size), ThisProcess()) == (0, 1)
    out = ctypes.create_string_buffer(8)
    assert kernel_ioctl(handler, fh, FIOC_GET_SIZE, ctypes.addressof(out), ThisProcess()) == (0, 1)
    assert struct.unpack("Q", out.raw) == (4096,)


def test_bad_pointers_are_efault_and_change_nothing(membuf: tuple[Kernel, CuseHandler, int]) -> None:
    kernel, handler, fh = membuf
    with pytest.raises(OSError) as bad_arg:
        kernel_ioctl(handler, fh, FIOC_READ, 0x10, ThisProcess())
    assert bad_arg.value.errno == errno.EFAULT
    arg = ctypes.create_string_buffer(RW_ARG.pack(0, 0x10, 64, 0, 0), RW_ARG.size)  # its buffer unmapped
    with pytest.raises(OSError) as bad_buf:
        kernel_ioctl(handler, fh, FIOC_WRITE, ctypes.addressof(arg), ThisProcess())
    assert bad_buf.value.errno == errno.EFAULT
    assert len(kernel.lookup("membuf").device.data) == 0  # the write never happened


def refuse(*args: Any) -> int:
    """process_vm_readv/writev as for a daemon without ptrace rights over its caller."""
    ctypes.set_errno(errno.EPERM)
    return -1


def test_a_caller_out_of_reach_is_served_by_the_rounds(membuf: tuple[Kernel, CuseHandler, int],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    kernel, handler, fh = membuf
    monkeypatch.setattr(cuse, "_process_vm_readv", refuse)
    monkeypatch.setattr(cuse, "_process_vm_writev", refuse)
    data = ctypes.create_string_buffer(b"rounds", 6)
    arg = rw_arg(0, data, 6)
    assert kernel_ioctl(handler, fh, FIOC_WRITE, ctypes.addressof(arg), ThisProcess()) == (6, 3)
    back = ctypes.create_string_buffer(6)
    arg = rw_arg(0, back, 6)
    assert kernel_ioctl(handler, fh, FIOC_READ, ctypes.addressof(arg), ThisProcess()) == (6, 3)
    assert back.raw == b"rounds"
    said = [line for line in kernel.dmesg() if "not reachable" in line]
    assert len(said) == 1, said  # once, not per ioctl


def test_writes_refused_after_the_driver_ran_go_back_through_the_kernel(
        membuf: tuple[Kernel, CuseHandler, int], monkeypatch: pytest.MonkeyPatch) -> None:
    kernel, handler, fh = membuf
    kernel.lookup("membuf").device.resize(21)
    monkeypatch.setattr(cuse, "_process_vm_writev", refuse)
    out = ctypes.create_string_buffer(8)
    # the driver runs once, in the first request; its answer reaches the caller as a retry's out-iovec
    assert kernel_ioctl(handler, fh, FIOC_GET_SIZE, ctypes.addressof(out), ThisProcess()) == (0, 2)
    assert struct.unpack("Q", out.raw) == (21,)
    assert kernel.lookup("membuf").stats.ioctls == 1
