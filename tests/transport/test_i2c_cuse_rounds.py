"""What an i2c-dev call costs over CUSE, against the simulated kernel of test_cuse_ioctl_rounds:
I2C_RDWR fetches all its buffers in one retry round (copyin_many), so any number of
messages takes the same four requests; one copyin per buffer would take n + 3."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

from pykld import Kernel
from pykld.kernel.fd import SimMemory
from pykld.transport.cuse import CuseHandler

from .conftest import EXAMPLES
from .test_cuse_ioctl_rounds import kernel_ioctl

I2C_FUNCS, I2C_SLAVE, I2C_RDWR, I2C_SMBUS = 0x0705, 0x0703, 0x0707, 0x0720
MSG = struct.Struct("=HHH2xQ")


@pytest.fixture
def bus() -> Iterator[tuple[CuseHandler, SimMemory]]:
    kernel = Kernel()
    kernel.kldload(str(EXAMPLES / "i2c_sensors.py"))
    cdev = kernel.lookup("i2c-1")
    handler = CuseHandler(kernel, cdev)
    handler.files[5] = kernel.open_cdev(cdev, os.O_RDWR)
    yield handler, SimMemory()
    kernel.shutdown()


@pytest.mark.parametrize("reads", [1, 2, 10, 41])
def test_i2c_rdwr_takes_four_requests_whatever_its_length(bus: tuple[CuseHandler, SimMemory], reads: int) -> None:
    handler, memory = bus
    pointer = memory.alloc(b"\x00")
    buffers = [memory.alloc(2) for _ in range(reads)]
    table = MSG.pack(0x50, 0, 1, pointer) + b"".join(MSG.pack(0x50, 1, 2, buf) for buf in buffers)
    arg = memory.alloc(struct.pack("=QI4x", memory.alloc(table), reads + 1))
    assert kernel_ioctl(handler, 5, I2C_RDWR, arg, memory) == (reads + 1, 4)
    assert all(memory.read(buf, 2) == b"\xff\xff" for buf in buffers)


def test_i2c_funcs_and_an_smbus_read(bus: tuple[CuseHandler, SimMemory]) -> None:
    handler, memory = bus
    out = memory.alloc(8)
    assert kernel_ioctl(handler, 5, I2C_FUNCS, out, memory) == (0, 2)  # the copyout's out-iovec, the reply
    assert memory.read(out, 8) == (0x0FFF800B).to_bytes(8, "little")
    assert kernel_ioctl(handler, 5, I2C_SLAVE, 0x48, memory) == (0, 1)
    data = memory.alloc(34)
    arg = memory.alloc(struct.pack("=BBxxIQ", 1, 1, 3, data))  # read word data, register 1
    assert kernel_ioctl(handler, 5, I2C_SMBUS, arg, memory) == (0, 3)
    assert memory.read(data, 2) == b"\x60\xa0"
