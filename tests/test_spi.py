"""The SPI bus (pykld.bus.spi) in process: spidev's ioctls, errnos and limits, and the
chip-select framing a peripheral sees."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pykld import _IOR, _IOW, Kernel
from pykld.bus import spi
from pykld.kernel.fd import SimFile, SimMemory

# A peripheral that records what the wires carried and answers each byte with its
# complement, so every MISO byte says which MOSI byte it belongs to.
RECORDER = """
    from pykld import Module
    from pykld.bus.spi import SpiPeripheral, make_spidev

    class Recorder(SpiPeripheral):
        modes = frozenset({0, 3})

        def __init__(self):
            self.events = []

        def select(self):
            self.events.append("select")

        def exchange(self, mosi, wire):
            self.events.append((bytes(mosi), wire))
            return bytes(b ^ 0xFF for b in mosi)

        def deselect(self):
            self.events.append("deselect")

    class Bus(Module):
        name = "recorder"

        def load(self):
            self.chip = Recorder()
            self.spidev = make_spidev(self.chip, 2, 1, perms=0o666, max_speed_hz=2_000_000)

        def unload(self):
            self.spidev.destroy()
"""
DEV = "/dev/spidev2.1"


@pytest.fixture
def bus(kernel: Kernel, load_driver: Callable[..., int]) -> Any:
    load_driver(RECORDER)
    return kernel.module("recorder").instance


@pytest.fixture
def f(kernel: Kernel, bus: Any) -> Iterator[SimFile]:
    file = kernel.open(DEV, os.O_RDWR)
    yield file
    if not file.closed:
        file.close()


@pytest.fixture
def mem() -> SimMemory:
    return SimMemory()


def transfer(tx: int = 0, rx: int = 0, length: int = 0, speed: int = 0, bits: int = 0, cs_change: int = 0,
             tx_nbits: int = 0, rx_nbits: int = 0, delay: int = 0) -> bytes:
    return spi.SPI_IOC_TRANSFER.pack(tx, rx, length, speed, delay, bits, cs_change, tx_nbits, rx_nbits, 0, 0)


def message(f: SimFile, mem: SimMemory, *transfers: bytes) -> int:
    return f.ioctl(spi.SPI_IOC_MESSAGE(len(transfers)), b"".join(transfers), mem).result


def errno_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(OSError) as excinfo:
        call()
    return excinfo.value.errno


def events(bus: Any) -> list[object]:
    """What the peripheral saw: "select", the MOSI bytes of each exchange, "deselect"."""
    return [e if isinstance(e, str) else e[0] for e in bus.chip.events]


def set_u8(f: SimFile, cmd: int, value: int) -> None:
    f.ioctl(cmd, bytes([value]))


def get_u8(f: SimFile, cmd: int) -> int:
    out = f.ioctl(cmd).data
    assert out is not None
    return out[0]


def get_u32(f: SimFile, cmd: int) -> int:
    out = f.ioctl(cmd).data
    assert out is not None
    return int(struct.unpack("=I", out)[0])


def test_numbers_are_spidev_h_s() -> None:
    assert (spi.SPI_IOC_MESSAGE(1), spi.SPI_IOC_MESSAGE(2)) == (0x40206B00, 0x40406B00)
    assert (spi.SPI_IOC_RD_MODE, spi.SPI_IOC_WR_MODE) == (0x80016B01, 0x40016B01)
    assert (spi.SPI_IOC_RD_LSB_FIRST, spi.SPI_IOC_WR_LSB_FIRST) == (0x80016B02, 0x40016B02)
    assert (spi.SPI_IOC_RD_BITS_PER_WORD, spi.SPI_IOC_WR_BITS_PER_WORD) == (0x80016B03, 0x40016B03)
    assert (spi.SPI_IOC_RD_MAX_SPEED_HZ, spi.SPI_IOC_WR_MAX_SPEED_HZ) == (0x80046B04, 0x40046B04)
    assert (spi.SPI_IOC_RD_MODE32, spi.SPI_IOC_WR_MODE32) == (0x80046B05, 0x40046B05)
    assert spi.SPI_IOC_TRANSFER.size == 32


def test_settings_start_as_the_device_was_declared(f: SimFile) -> None:
    assert get_u8(f, spi.SPI_IOC_RD_MODE) == 0
    assert get_u8(f, spi.SPI_IOC_RD_BITS_PER_WORD) == 8
    assert get_u32(f, spi.SPI_IOC_RD_MAX_SPEED_HZ) == 2_000_000


def test_mode_is_the_devices_shared_by_every_open(kernel: Kernel, f: SimFile) -> None:
    set_u8(f, spi.SPI_IOC_WR_MODE, spi.SPI_CPOL | spi.SPI_CPHA | spi.SPI_CS_HIGH)
    with kernel.open(DEV, os.O_RDWR) as other:
        assert get_u8(other, spi.SPI_IOC_RD_MODE) == 0x07
        assert get_u32(other, spi.SPI_IOC_RD_MODE32) == 0x07


def test_mode_bits_the_controller_lacks_are_einval_and_change_nothing(f: SimFile) -> None:
    set_u8(f, spi.SPI_IOC_WR_MODE, 1)
    assert errno_of(lambda: f.ioctl(spi.SPI_IOC_WR_MODE32, struct.pack("=I", spi.SPI_3WIRE))) == errno.EINVAL
    assert errno_of(lambda: set_u8(f, spi.SPI_IOC_WR_MODE, spi.SPI_NO_CS)) == errno.EINVAL
    # outside spidev's SPI_MODE_MASK (SPI_CS_WORD) is refused before the controller is asked
    assert errno_of(lambda: f.ioctl(spi.SPI_IOC_WR_MODE32, struct.pack("=I", 0x1000))) == errno.EINVAL
    assert get_u8(f, spi.SPI_IOC_RD_MODE) == 1


def test_dual_and_quad_the_controller_lacks_are_dropped_silently(f: SimFile) -> None:
    """spi_setup() "ignores unsupported mode bits" for wide lines: the write succeeds and
    the mode read back does not have them (py-spidev's setters compare the two)."""
    assert f.ioctl(spi.SPI_IOC_WR_MODE32, struct.pack("=I", spi.SPI_TX_DUAL | spi.SPI_CPHA)).result == 0
    assert get_u32(f, spi.SPI_IOC_RD_MODE32) == spi.SPI_CPHA


def test_lsb_first_has_its_own_ioctl_and_a_mode_bit(f: SimFile) -> None:
    set_u8(f, spi.SPI_IOC_WR_LSB_FIRST, 1)
    assert get_u8(f, spi.SPI_IOC_RD_LSB_FIRST) == 1
    assert get_u8(f, spi.SPI_IOC_RD_MODE) == spi.SPI_LSB_FIRST
    set_u8(f, spi.SPI_IOC_WR_MODE, 0)
    assert get_u8(f, spi.SPI_IOC_RD_LSB_FIRST) == 0


def test_bits_per_word_0_means_8_and_widths_the_controller_lacks_are_einval(f: SimFile) -> None:
    set_u8(f, spi.SPI_IOC_WR_BITS_PER_WORD, 16)
    assert get_u8(f, spi.SPI_IOC_RD_BITS_PER_WORD) == 16
    assert errno_of(lambda: set_u8(f, spi.SPI_IOC_WR_BITS_PER_WORD, 12)) == errno.EINVAL
    assert get_u8(f, spi.SPI_IOC_RD_BITS_PER_WORD) == 16
    set_u8(f, spi.SPI_IOC_WR_BITS_PER_WORD, 0)
    assert get_u8(f, spi.SPI_IOC_RD_BITS_PER_WORD) == 8


def test_max_speed_reads_back_as_written_and_0_is_einval(f: SimFile) -> None:
    f.ioctl(spi.SPI_IOC_WR_MAX_SPEED_HZ, struct.pack("=I", 123_456_789))  # above the controller's
    assert get_u32(f, spi.SPI_IOC_RD_MAX_SPEED_HZ) == 123_456_789
    assert errno_of(lambda: f.ioctl(spi.SPI_IOC_WR_MAX_SPEED_HZ, struct.pack("=I", 0))) == errno.EINVAL


def test_transfers_run_at_the_speed_asked_capped_by_the_controller(f: SimFile, mem: SimMemory, bus: Any) -> None:
    tx = mem.alloc(b"ab")
    message(f, mem, transfer(tx, 0, 1, speed=500_000), transfer(tx, 0, 1))
    f.ioctl(spi.SPI_IOC_WR_MAX_SPEED_HZ, struct.pack("=I", 10**9))
    message(f, mem, transfer(tx, 0, 1))
    speeds = [e[1].speed_hz for e in bus.chip.events if not isinstance(e, str)]
    assert speeds == [500_000, 2_000_000, spi.SpiController().max_speed_hz]


def test_other_numbers_are_enotty(f: SimFile) -> None:
    assert errno_of(lambda: f.ioctl(_IOR("j", 1, 1))) == errno.ENOTTY
    assert errno_of(lambda: f.ioctl(_IOR("k", 7, 1))) == errno.ENOTTY
    assert errno_of(lambda: f.ioctl(_IOR("k", 0, 32))) == errno.ENOTTY  # MESSAGE's number, read direction


def test_a_message_of_partial_transfers_is_einval_and_of_none_is_0(f: SimFile, mem: SimMemory,
                                                                      bus: Any) -> None:
    assert errno_of(lambda: f.ioctl(_IOW("k", 0, 33), bytes(33), mem)) == errno.EINVAL
    assert f.ioctl(_IOW("k", 0, 0), 0, mem).result == 0
    assert events(bus) == []


def test_a_message_holds_chip_select_across_its_transfers(f: SimFile, mem: SimMemory, bus: Any) -> None:
    tx, rx = mem.alloc(b"\x01\x02\x03"), mem.alloc(3)
    assert message(f, mem, transfer(tx, rx, 1), transfer(tx + 1, rx + 1, 2)) == 3
    assert events(bus) == ["select", b"\x01", b"\x02\x03", "deselect"]
    assert mem.read(rx, 3) == b"\xfe\xfd\xfc"


def test_cs_change_breaks_the_frame_between_transfers(f: SimFile, mem: SimMemory, bus: Any) -> None:
    tx = mem.alloc(b"\x01\x02")
    message(f, mem, transfer(tx, 0, 1, cs_change=1), transfer(tx + 1, 0, 1))
    assert events(bus) == ["select", b"\x01", "deselect", "select", b"\x02", "deselect"]


def test_cs_change_on_the_last_transfer_keeps_the_frame_for_the_next_message(
        f: SimFile, mem: SimMemory, bus: Any) -> None:
    tx = mem.alloc(b"\x01\x02")
    message(f, mem, transfer(tx, 0, 1, cs_change=1))
    assert events(bus) == ["select", b"\x01"]
    message(f, mem, transfer(tx + 1, 0, 1))
    assert events(bus) == ["select", b"\x01", b"\x02", "deselect"]


def test_the_last_close_ends_a_frame_left_open(f: SimFile, mem: SimMemory, bus: Any) -> None:
    message(f, mem, transfer(mem.alloc(b"\x01"), 0, 1, cs_change=1))
    f.close()
    assert events(bus)[-1] == "deselect"


def test_tx_and_rx_may_be_the_same_buffer(f: SimFile, mem: SimMemory) -> None:
    buf = mem.alloc(b"\x0f\xf0")
    message(f, mem, transfer(buf, buf, 2))
    assert mem.read(buf, 2) == b"\xf0\x0f"


def test_no_tx_buffer_clocks_out_zeros_and_no_rx_buffer_discards(f: SimFile, mem: SimMemory, bus: Any) -> None:
    rx = mem.alloc(2)
    assert message(f, mem, transfer(0, rx, 2), transfer(mem.alloc(b"\x05"), 0, 1)) == 3
    assert events(bus) == ["select", b"\0\0", b"\x05", "deselect"]
    assert mem.read(rx, 2) == b"\xff\xff"


def test_a_bad_tx_pointer_is_efault_before_anything_reaches_the_wire(f: SimFile, mem: SimMemory,
                                                                        bus: Any) -> None:
    good = mem.alloc(b"\x01")
    assert errno_of(lambda: message(f, mem, transfer(good, 0, 1), transfer(0xDEAD0000, 0, 4))) == errno.EFAULT
    assert events(bus) == []
    assert message(f, mem, transfer(good, 0, 1)) == 1  # and the device goes on serving


def test_a_bad_rx_pointer_is_efault_after_the_transfer_as_in_linux(f: SimFile, mem: SimMemory, bus: Any) -> None:
    assert errno_of(lambda: message(f, mem, transfer(mem.alloc(b"\x01"), 0xDEAD0000, 1))) == errno.EFAULT
    assert events(bus) == ["select", b"\x01", "deselect"]


def test_more_than_bufsiz_each_way_is_emsgsize(f: SimFile, mem: SimMemory, bus: Any) -> None:
    big = mem.alloc(8192)
    assert message(f, mem, transfer(big, big, 4096)) == 4096
    assert errno_of(lambda: message(f, mem, transfer(big, 0, 4097))) == errno.EMSGSIZE
    assert errno_of(lambda: message(f, mem, transfer(0, big, 4097))) == errno.EMSGSIZE
    # each transfer takes its length rounded up to 8 bytes of the bounce buffer
    assert errno_of(lambda: message(f, mem, transfer(big, 0, 2049), transfer(big, 0, 2041))) == errno.EMSGSIZE
    assert message(f, mem, transfer(big, 0, 2048), transfer(big, 0, 2048)) == 4096
    assert events(bus).count("select") == 2


def test_errors_come_in_spidevs_order(f: SimFile, mem: SimMemory) -> None:
    """spidev copies each transfer's tx as it walks the array, checking sizes first."""
    big = mem.alloc(8192)
    assert errno_of(lambda: message(f, mem, transfer(0xDEAD0000, 0, 1), transfer(big, 0, 4097))) == errno.EFAULT
    assert errno_of(lambda: message(f, mem, transfer(big, 0, 4097), transfer(0xDEAD0000, 0, 1))) == errno.EMSGSIZE
    # a bad pointer comes before a bad word size, which the controller checks later
    assert errno_of(lambda: message(f, mem, transfer(0xDEAD0000, 0, 3, bits=16))) == errno.EFAULT


def test_transfers_the_controller_cannot_do_are_einval(f: SimFile, mem: SimMemory, bus: Any) -> None:
    buf = mem.alloc(8)
    assert errno_of(lambda: message(f, mem, transfer(buf, 0, 3, bits=16))) == errno.EINVAL  # not whole words
    assert errno_of(lambda: message(f, mem, transfer(buf, 0, 2, bits=12))) == errno.EINVAL
    assert errno_of(lambda: message(f, mem, transfer(buf, 0, 2, tx_nbits=2))) == errno.EINVAL  # dual, not set up
    assert errno_of(lambda: message(f, mem, transfer(0, buf, 2, rx_nbits=4))) == errno.EINVAL
    assert errno_of(lambda: message(f, mem, transfer(buf, 0, 1), transfer(buf, 0, 2, bits=12))) == errno.EINVAL
    assert events(bus) == []  # validated before the first byte


def test_wider_words_go_out_msb_first_from_host_order_memory(f: SimFile, mem: SimMemory, bus: Any) -> None:
    tx, rx = mem.alloc(struct.pack("<HH", 0x1234, 0xABCD)), mem.alloc(4)
    message(f, mem, transfer(tx, rx, 4, bits=16))
    assert events(bus)[1] == b"\x12\x34\xab\xcd"
    assert struct.unpack("<HH", mem.read(rx, 4)) == (0x1234 ^ 0xFFFF, 0xABCD ^ 0xFFFF)
    tx32 = mem.alloc(struct.pack("<I", 0xFF123456))
    message(f, mem, transfer(tx32, 0, 4, bits=24))  # 24 bits of a 32-bit word
    assert events(bus)[4] == b"\x12\x34\x56"


def test_lsb_first_reverses_the_bits_of_each_word_on_the_wire(f: SimFile, mem: SimMemory, bus: Any) -> None:
    set_u8(f, spi.SPI_IOC_WR_MODE, spi.SPI_LSB_FIRST)
    rx = mem.alloc(1)
    message(f, mem, transfer(mem.alloc(b"\x01"), rx, 1))
    assert events(bus)[1] == b"\x80"
    assert mem.read(rx, 1) == b"\xfe"  # the peripheral's 0x7F, received LSB first
    tx16 = mem.alloc(struct.pack("<H", 0x0001))
    message(f, mem, transfer(tx16, 0, 2, bits=16))
    assert events(bus)[4] == b"\x80\x00"


def test_loopback_feeds_mosi_to_miso_without_the_peripheral(f: SimFile, mem: SimMemory, bus: Any) -> None:
    set_u8(f, spi.SPI_IOC_WR_MODE, spi.SPI_LOOP)
    rx = mem.alloc(3)
    message(f, mem, transfer(mem.alloc(b"abc"), rx, 3))
    assert mem.read(rx, 3) == b"abc"
    assert b"abc" not in events(bus)


def test_a_clock_mode_the_peripheral_cannot_follow_reads_an_idle_line(f: SimFile, mem: SimMemory,
                                                                         bus: Any) -> None:
    set_u8(f, spi.SPI_IOC_WR_MODE, 1)  # the recorder follows modes 0 and 3
    rx = mem.alloc(2)
    message(f, mem, transfer(mem.alloc(b"\x01\x02"), rx, 2))
    assert mem.read(rx, 2) == b"\xff\xff"
    assert events(bus) == ["select", "deselect"]


def test_read_and_write_are_half_duplex_messages_up_to_bufsiz(f: SimFile, bus: Any) -> None:
    assert f.write(b"\x10\x20") == 2
    assert f.read(3) == b"\xff\xff\xff"  # MOSI idle low during a read: the complement of zeros
    assert events(bus) == ["select", b"\x10\x20", "deselect", "select", b"\0\0\0", "deselect"]
    assert len(f.read(4096)) == 4096
    assert errno_of(lambda: f.read(4097)) == errno.EMSGSIZE
    assert errno_of(lambda: f.write(bytes(4097))) == errno.EMSGSIZE
    set_u8(f, spi.SPI_IOC_WR_BITS_PER_WORD, 16)
    assert errno_of(lambda: f.read(3)) == errno.EINVAL


def test_a_peripheral_that_answers_the_wrong_length_costs_its_caller_eio(
        kernel: Kernel, load_driver: Callable[..., int], mem: SimMemory) -> None:
    load_driver(RECORDER.replace("return bytes(b ^ 0xFF for b in mosi)", "return b'x'"))
    with kernel.open(DEV, os.O_RDWR) as f:
        assert errno_of(lambda: message(f, mem, transfer(mem.alloc(b"ab"), 0, 2))) == errno.EIO
        assert message(f, mem, transfer(mem.alloc(b"a"), 0, 1)) == 1
    assert any("exchange returned 1 bytes for 2" in line for line in kernel.dmesg())


def test_counters_count_messages_transfers_bytes_and_frames(f: SimFile, mem: SimMemory, bus: Any) -> None:
    tx = mem.alloc(b"abc")
    message(f, mem, transfer(tx, 0, 1, cs_change=1), transfer(tx, 0, 2))
    f.read(4)
    stats = bus.spidev.stats
    assert (stats.messages, stats.transfers, stats.bytes, stats.frames) == (2, 3, 7, 3)


def test_spidevs_mask_and_the_controllers_limits_apply_to_a_custom_controller(
        kernel: Kernel, load_driver: Callable[..., int]) -> None:
    """A controller that could do SPI_CS_WORD (0x1000) still gets EINVAL from spidev, whose
    mask leaves it out; a device declared faster than its controller starts at the controller's."""
    load_driver(RECORDER.replace("max_speed_hz=2_000_000", "max_speed_hz=10**9, controller=spi.SpiController("
                                 "mode_bits=0x10FF, max_speed_hz=8_000_000)")
                .replace("from pykld.bus.spi import", "from pykld.bus import spi\n    from pykld.bus.spi import"))
    with kernel.open(DEV, os.O_RDWR) as f:
        assert errno_of(lambda: f.ioctl(spi.SPI_IOC_WR_MODE32, struct.pack("=I", 0x1000))) == errno.EINVAL
        assert f.ioctl(spi.SPI_IOC_WR_MODE, bytes([spi.SPI_NO_CS])).result == 0  # this controller has it
        assert get_u32(f, spi.SPI_IOC_RD_MAX_SPEED_HZ) == 8_000_000
