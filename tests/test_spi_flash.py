"""examples/spi_flash.py in process: a W25Q64 as its datasheet describes it, through spidev's ioctls."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pykld import Kernel
from pykld.bus import spi
from pykld.kernel.fd import SimFile, SimMemory

DEV = "/dev/spidev0.0"
SIZE = 8 << 20


class Flash:
    """A program's view: xfer() as py-spidev's xfer2 (one SPI_IOC_MESSAGE(1))."""

    def __init__(self, f: SimFile, chip: Any, kernel: Kernel) -> None:
        self.f, self.chip, self.kernel, self.mem = f, chip, kernel, SimMemory()

    def sysctl(self, name: str, *value: object) -> Any:
        return self.kernel.sysctl(f"dev.w25q64.0.{name}", *value)

    def xfer(self, *data: int | bytes) -> bytes:
        tx = b"".join(bytes([d]) if isinstance(d, int) else d for d in data)
        txa, rxa = self.mem.alloc(tx), self.mem.alloc(len(tx))
        arg = spi.SPI_IOC_TRANSFER.pack(txa, rxa, len(tx), 0, 0, 0, 0, 0, 0, 0, 0)
        assert self.f.ioctl(spi.SPI_IOC_MESSAGE(1), arg, self.mem).result == len(tx)
        return self.mem.read(rxa, len(tx))

    def status(self) -> int:
        return self.xfer(0x05, 0)[1]

    def wait(self) -> None:
        deadline = time.monotonic() + 5
        while self.status() & 1:
            assert time.monotonic() < deadline, "WIP never cleared"
            time.sleep(0.001)

    def read(self, addr: int, n: int) -> bytes:
        return self.xfer(0x03, addr.to_bytes(3, "big"), bytes(n))[4:]

    def program(self, addr: int, data: bytes) -> None:
        self.xfer(0x06)
        self.xfer(0x02, addr.to_bytes(3, "big"), data)
        self.wait()

    def erase(self, opcode: int, addr: int | None = None) -> None:
        self.xfer(0x06)
        self.xfer(opcode, addr.to_bytes(3, "big") if addr is not None else b"")
        self.wait()


@pytest.fixture
def flash(kernel: Kernel, example: Callable[[str], str]) -> Iterator[Flash]:
    kernel.kldload(example("spi_flash"))
    kernel.sysctl("dev.w25q64.0.time_scale", 0.0)
    with kernel.open(DEV, os.O_RDWR) as f:
        yield Flash(f, kernel.module("spi_flash").instance.flash, kernel)


def test_identifies_itself_as_a_w25q64(flash: Flash) -> None:
    assert flash.xfer(0x9F, 0, 0, 0) == b"\xff\xef\x40\x17"
    assert flash.xfer(0x90, 0, 0, 0, 0, 0, 0, 0)[4:] == b"\xef\x16\xef\x16"
    assert flash.xfer(0x90, 0, 0, 1, 0, 0)[4:] == b"\x16\xef"
    assert flash.xfer(0xAB, 0, 0, 0, 0, 0)[4:] == b"\x16\x16"


def test_blank_reads_ff_and_a_page_program_reads_back(flash: Flash) -> None:
    assert flash.read(0x1000, 16) == b"\xff" * 16
    flash.program(0x1000, b"hello, flash")
    assert flash.read(0x1000, 14) == b"hello, flash\xff\xff"
    assert flash.sysctl("programs") == 1


def test_fast_read_takes_a_dummy_byte(flash: Flash) -> None:
    flash.program(0x20, b"abc")
    assert flash.xfer(0x0B, 0, 0, 0x20, 0xAA, bytes(3))[5:] == b"abc"


def test_program_wraps_within_its_page(flash: Flash) -> None:
    flash.program(0x10FE, b"hello")
    assert flash.read(0x10FE, 2) == b"he"
    assert flash.read(0x1000, 3) == b"llo"
    assert flash.read(0x1100, 1) == b"\xff"  # the next page is untouched


def test_more_than_a_page_keeps_the_last_256_bytes(flash: Flash) -> None:
    data = bytes(range(256)) + b"\x11\x22"
    flash.program(0x200, data)
    assert flash.read(0x200, 256) == b"\x11\x22" + bytes(range(2, 256))


def test_programming_only_clears_bits(flash: Flash) -> None:
    flash.program(0, b"\xf0")
    flash.program(0, b"\x0f")
    assert flash.read(0, 1) == b"\x00"


def test_program_and_erase_without_wren_are_ignored(flash: Flash) -> None:
    flash.xfer(0x02, 0, 0, 0, b"zz")
    assert flash.read(0, 2) == b"\xff\xff"
    flash.program(0, b"keep")
    flash.xfer(0x20, 0, 0, 0)
    assert flash.read(0, 4) == b"keep"
    flash.xfer(0x06)
    flash.xfer(0x04)  # WRDI
    flash.xfer(0xC7)
    assert flash.read(0, 4) == b"keep"


def test_wren_sets_wel_and_the_operation_clears_it(flash: Flash) -> None:
    assert flash.status() == 0
    flash.xfer(0x06)
    assert flash.status() == 0x02
    flash.xfer(0x02, 0, 0, 0, b"x")
    assert flash.status() == 0


@pytest.mark.parametrize(("opcode", "size"), [(0x20, 4 << 10), (0x52, 32 << 10), (0xD8, 64 << 10)])
def test_erases_clear_their_aligned_block_to_ff(flash: Flash, opcode: int, size: int) -> None:
    for addr in (size - 1, size, 2 * size - 1, 2 * size):
        flash.program(addr, b"\0")
    flash.erase(opcode, size + 123)  # any address inside the block
    assert flash.read(size - 1, 1) == b"\0"
    assert flash.read(size, 1) == b"\xff" and flash.read(2 * size - 1, 1) == b"\xff"
    assert flash.read(2 * size, 1) == b"\0"
    assert flash.sysctl("erases") == 1


@pytest.mark.parametrize("opcode", [0xC7, 0x60])
def test_chip_erase(flash: Flash, opcode: int) -> None:
    flash.program(0, b"\0")
    flash.program(SIZE - 1, b"\0")
    flash.erase(opcode)
    assert flash.read(0, 1) == b"\xff" and flash.read(SIZE - 1, 1) == b"\xff"


def test_a_command_cut_short_does_nothing(flash: Flash) -> None:
    flash.program(0, b"\0")
    flash.xfer(0x06)
    flash.xfer(0x20, 0, 0)  # two address bytes: chip select rose too early
    assert flash.read(0, 1) == b"\0"
    flash.xfer(0x06, 0)  # WREN with an extra byte: not executed either
    assert flash.status() & 0x02


def test_read_wraps_at_the_end_of_the_array(flash: Flash) -> None:
    flash.program(0, b"A")
    flash.program(SIZE - 1, b"Z")
    assert flash.read(SIZE - 1, 2) == b"ZA"


def test_write_in_progress_lasts_and_hides_other_commands(flash: Flash) -> None:
    flash.sysctl("time_scale", "300")  # a page program takes 0.21 s
    flash.xfer(0x06)
    flash.xfer(0x02, 0, 0, 0, b"x")
    assert flash.status() & 0x03 == 0x03  # WIP, and WEL until the program ends
    assert flash.sysctl("status") == 0x03
    assert flash.xfer(0x9F, 0, 0, 0) == b"\xff" * 4  # ignored while busy
    assert flash.xfer(0x03, 0, 0, 0, 0) == b"\xff" * 5
    flash.wait()
    assert flash.status() == 0
    assert flash.read(0, 1) == b"x"


def test_power_down_hears_only_release(flash: Flash) -> None:
    flash.xfer(0xB9)
    assert flash.xfer(0x9F, 0, 0, 0) == b"\xff" * 4
    flash.xfer(0x06)
    assert flash.status() == 0xFF  # MISO not driven
    assert flash.xfer(0xAB, 0, 0, 0, 0)[4] == 0x16
    assert flash.xfer(0x9F, 0, 0, 0) == b"\xff\xef\x40\x17"
    assert flash.status() == 0  # the WREN above was not heard


def test_write_status_register_keeps_its_writable_bits(flash: Flash) -> None:
    flash.xfer(0x06)
    flash.xfer(0x01, 0x1F, 0x02)  # BP0-2 and WIP/WEL bits; QE
    assert flash.status() == 0x1C
    assert flash.xfer(0x35, 0)[1] == 0x02


def test_a_backing_file_holds_the_contents(flash: Flash, tmp_path: Path) -> None:
    image = tmp_path / "flash.img"
    image.write_bytes(b"boot")
    flash.sysctl("file", str(image))
    assert os.path.getsize(image) == SIZE
    assert flash.read(0, 6) == b"boot\xff\xff"
    flash.program(0x100, b"saved")
    with open(image, "rb") as f:
        f.seek(0x100)
        assert f.read(5) == b"saved"
    flash.sysctl("file", "")  # back to memory, contents kept
    assert flash.read(0x100, 5) == b"saved"
    flash.program(0x200, b"not in the file")
    assert image.read_bytes()[0x200] == 0xFF


def test_a_backing_file_larger_than_the_chip_is_refused(flash: Flash, tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    image.write_bytes(bytes(SIZE + 1))
    with pytest.raises(OSError) as excinfo:
        flash.sysctl("file", str(image))
    assert "a W25Q64 holds 8388608" in str(excinfo.value)
    assert flash.read(0, 1) == b"\xff"


def test_clock_modes_1_and_2_get_nothing(flash: Flash) -> None:
    flash.f.ioctl(spi.SPI_IOC_WR_MODE, bytes([1]))
    assert flash.xfer(0x9F, 0, 0, 0) == b"\xff" * 4
    flash.f.ioctl(spi.SPI_IOC_WR_MODE, bytes([3]))
    assert flash.xfer(0x9F, 0, 0, 0) == b"\xff\xef\x40\x17"


def test_sysctl_refuses_what_the_chip_cannot_take(flash: Flash, tmp_path: Path) -> None:
    for name, value, code in (("time_scale", "-1", errno.EINVAL), ("time_scale", "1001", errno.EINVAL),
                              ("status", "0", errno.EPERM), ("programs", "0", errno.EPERM),
                              ("file", str(tmp_path / "no" / "such" / "dir"), errno.ENOENT)):
        with pytest.raises(OSError) as excinfo:
            flash.sysctl(name, value)
        assert excinfo.value.errno == code, name
    assert flash.read(0, 1) == b"\xff"  # and it goes on serving
