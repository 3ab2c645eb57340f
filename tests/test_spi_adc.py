"""examples/spi_adc.py in process: an MCP3008 modelled bit by bit."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pykld import Kernel
from pykld.bus import spi
from pykld.kernel.fd import SimFile, SimMemory

DEV = "/dev/spidev0.1"


class Adc:
    def __init__(self, f: SimFile, chip: Any, kernel: Kernel) -> None:
        self.f, self.chip, self.kernel, self.mem = f, chip, kernel, SimMemory()

    def set(self, ch: int, volts: float) -> None:
        self.kernel.sysctl(f"dev.mcp3008.0.ch{ch}", volts)

    def xfer(self, *tx: int) -> list[int]:
        txa, rxa = self.mem.alloc(bytes(tx)), self.mem.alloc(len(tx))
        arg = spi.SPI_IOC_TRANSFER.pack(txa, rxa, len(tx), 0, 0, 0, 0, 0, 0, 0, 0)
        self.f.ioctl(spi.SPI_IOC_MESSAGE(1), arg, self.mem)
        return list(self.mem.read(rxa, len(tx)))

    def single(self, ch: int) -> int:
        r = self.xfer(1, 0x80 | ch << 4, 0)
        return (r[1] & 3) << 8 | r[2]


@pytest.fixture
def adc(kernel: Kernel, example: Callable[[str], str]) -> Iterator[Adc]:
    kernel.kldload(example("spi_adc"))
    with kernel.open(DEV, os.O_RDWR) as f:
        yield Adc(f, kernel.module("spi_adc").instance.adc, kernel)


def test_the_datasheets_framing_gives_the_code(adc: Adc) -> None:
    adc.set(0, 1.65)
    assert adc.xfer(1, 0x80, 0) == [255, 250, 0]  # the spec's worked example: 512
    assert adc.single(0) == 512


def test_every_channel_converts_its_own_voltage(adc: Adc) -> None:
    for ch, volts in enumerate([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.3]):
        adc.set(ch, volts)
    assert [adc.single(ch) for ch in range(8)] == [0, 155, 310, 465, 620, 775, 930, 1023]
    assert adc.kernel.sysctl("dev.mcp3008.0.conversions") == 8


def test_codes_clamp_at_0_and_1023(adc: Adc) -> None:
    adc.chip.volts[3] = 5.0  # past vref: more than sysctl lets a test set
    adc.chip.volts[4] = -1.0
    assert (adc.single(3), adc.single(4)) == (1023, 0)
    assert adc.xfer(1, 0xC0, 0) == [0xFF, 0xF8, 0]  # high-impedance through the sample clock, then null, B9..


def test_differential_pairs_convert_the_difference_and_never_go_negative(adc: Adc) -> None:
    adc.set(0, 2.0)
    adc.set(1, 0.35)
    assert adc.xfer(1, 0x00, 0)[1:] == [0xFA, 0x00]  # CH0+ CH1-: floor(1024 * 1.65 / 3.3) = 512
    r = adc.xfer(1, 0x10, 0)  # CH0- CH1+: IN+ < IN-
    assert (r[1] & 3) << 8 | r[2] == 0


def test_any_alignment_works_bit_by_bit(adc: Adc) -> None:
    """Start bit as the last bit of a leading byte (the common framing) or anywhere else:
    here 5 leading zeros, start, SGL, D2 in the first byte; D1 D0 then sample, null, B9..."""
    adc.set(5, 3.3 * 700 / 1024 + 0.0001)  # code 700 = 0b1010111100
    assert adc.single(5) == 700
    r = adc.xfer(0b00000111, 0b01 << 6, 0, 0)  # SGL=1, D2..D0 = 101
    stream = "".join(f"{b:08b}" for b in r)
    # bits after D0 (index 10): sample (hi-Z 1), null 0, then B9..B0
    assert stream[10:12] == "10" and stream[12:22] == f"{700:010b}"


def test_clocking_on_gives_lsb_first_then_zeros(adc: Adc) -> None:
    adc.set(2, 3.3 * 0b1100000001 / 1024 + 0.0001)
    stream = "".join(f"{b:08b}" for b in adc.xfer(1, 0xA0, 0, 0, 0))
    msb = stream[14:24]
    assert msb == "1100000001"
    assert stream[24:33] == msb[-2::-1]  # B1..B9
    assert set(stream[33:]) == {"0"}


def test_without_a_start_bit_miso_stays_high_impedance(adc: Adc) -> None:
    assert adc.f.read(4) == b"\xff" * 4
    assert adc.chip.conversions == 0


def test_chip_select_restarts_the_frame(adc: Adc) -> None:
    adc.set(0, 1.65)
    adc.xfer(1)  # start bit, then chip select rises
    assert adc.xfer(0, 0) == [0xFF, 0xFF]  # a new frame: no start bit, nothing driven
    assert adc.single(0) == 512


def test_sysctl_nodes_set_vref_and_refuse_what_the_chip_cannot_take(adc: Adc) -> None:
    k = adc.kernel
    assert [oid.name for oid in k.sysctl_list("dev.mcp3008.0")] == [
        "dev.mcp3008.0.ch0", "dev.mcp3008.0.ch1", "dev.mcp3008.0.ch2", "dev.mcp3008.0.ch3", "dev.mcp3008.0.ch4",
        "dev.mcp3008.0.ch5", "dev.mcp3008.0.ch6", "dev.mcp3008.0.ch7", "dev.mcp3008.0.conversions",
        "dev.mcp3008.0.vref"]
    k.sysctl("dev.mcp3008.0.vref", "5.0")
    k.sysctl("dev.mcp3008.0.ch6", "2.5")
    assert adc.single(6) == 512
    for name, value in (("ch6", "-0.1"), ("ch6", "5.1"), ("vref", "0"), ("vref", "6")):
        with pytest.raises(OSError) as excinfo:
            k.sysctl(f"dev.mcp3008.0.{name}", value)
        assert excinfo.value.errno == errno.EINVAL
    assert k.sysctl("dev.mcp3008.0.ch6") == 2.5
    with pytest.raises(OSError) as excinfo:
        k.sysctl("dev.mcp3008.0.conversions", 0)
    assert excinfo.value.errno == errno.EPERM


def test_the_bus_publishes_its_settings_and_counters(adc: Adc) -> None:
    adc.f.ioctl(spi.SPI_IOC_WR_MODE, bytes([3]))
    adc.single(0)
    k = adc.kernel
    assert (k.sysctl("dev.spidev.0.1.mode"), k.sysctl("dev.spidev.0.1.max_speed_hz")) == (3, 1_350_000)
    assert (k.sysctl("dev.spidev.0.1.messages"), k.sysctl("dev.spidev.0.1.bytes")) == (1, 3)
    k.kldunload("spi_adc", force=True)
    assert k.sysctl_list() == []
