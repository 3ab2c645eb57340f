"""SPI: a peripheral behind a chip select, published as /dev/spidevB.C with spidev's ABI.

A peripheral is a Python object that sees what the wires carry: select() when
chip select asserts, exchange(mosi) -> miso for every run of bytes clocked in
full duplex, deselect() when chip select goes away.  Everything between a
program's system call and those three is this module's, and follows Linux's
code path for a real controller: spidev's ioctls and read/write
(drivers/spi/spidev.c: the bounce-buffer limit `bufsiz`, its checks in its
order, rx copied out only after the transfer), then spi_setup() and
__spi_validate() (drivers/spi/spi.c: mode bits the controller lacks, word sizes,
lengths that are not whole words, dual/quad widths), then the wire (words
shifted MSB or LSB first, chip select held across transfers unless cs_change).

The emulated controller declares what a simple real one does (SpiController):
modes 0-3, CS_HIGH, LSB_FIRST and LOOP; 8, 16, 24 and 32 bits per word (the
widths whose words are whole bytes on the wire); no dual/quad lines, which
spi_setup() drops silently, as Linux does.  With LOOP set the controller feeds
MOSI back to MISO and leaves the peripheral alone.  An idle MISO line reads as
ones (a pull-up): that is what a peripheral that does not drive it returns, and
what a program reads when the peripheral cannot follow the clock mode.
"""

from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from pykld.kpi import (
    _IOR,
    _IOW,
    IOC_IN,
    Cdev,
    CharacterDevice,
    OpenFile,
    Uio,
    copyin_many,
    copyout,
    ioctl_decode,
    make_dev,
    sysctl_add,
)

# <linux/spi/spi.h> mode bits
SPI_CPHA, SPI_CPOL, SPI_CS_HIGH, SPI_LSB_FIRST = 0x01, 0x02, 0x04, 0x08
SPI_3WIRE, SPI_LOOP, SPI_NO_CS, SPI_READY = 0x10, 0x20, 0x40, 0x80
SPI_TX_DUAL, SPI_TX_QUAD, SPI_RX_DUAL, SPI_RX_QUAD = 0x100, 0x200, 0x400, 0x800
SPI_TX_OCTAL, SPI_RX_OCTAL = 0x2000, 0x4000
SPI_RX_CPHA_FLIP, SPI_3WIRE_HIZ, SPI_MOSI_IDLE_LOW = 0x10000, 0x8000, 0x20000
#: spidev.c's SPI_MODE_MASK: the bits a program may set; any other is EINVAL.
SPI_MODE_MASK = (0xFF | SPI_TX_DUAL | SPI_TX_QUAD | SPI_RX_DUAL | SPI_RX_QUAD | SPI_TX_OCTAL
                 | SPI_RX_OCTAL | SPI_RX_CPHA_FLIP | SPI_3WIRE_HIZ | SPI_MOSI_IDLE_LOW)
# Widths spi_setup() drops without a word when the controller lacks them ("ugly bits").
_WIDE_LINES = SPI_TX_DUAL | SPI_TX_QUAD | SPI_TX_OCTAL | SPI_RX_DUAL | SPI_RX_QUAD | SPI_RX_OCTAL

# <linux/spi/spidev.h>
SPI_IOC_MAGIC = ord("k")
SPI_IOC_RD_MODE, SPI_IOC_WR_MODE = _IOR("k", 1, 1), _IOW("k", 1, 1)
SPI_IOC_RD_LSB_FIRST, SPI_IOC_WR_LSB_FIRST = _IOR("k", 2, 1), _IOW("k", 2, 1)
SPI_IOC_RD_BITS_PER_WORD, SPI_IOC_WR_BITS_PER_WORD = _IOR("k", 3, 1), _IOW("k", 3, 1)
SPI_IOC_RD_MAX_SPEED_HZ, SPI_IOC_WR_MAX_SPEED_HZ = _IOR("k", 4, 4), _IOW("k", 4, 4)
SPI_IOC_RD_MODE32, SPI_IOC_WR_MODE32 = _IOR("k", 5, 4), _IOW("k", 5, 4)

#: struct spi_ioc_transfer: tx_buf, rx_buf, len, speed_hz, delay_usecs, bits_per_word,
#: cs_change, tx_nbits, rx_nbits, word_delay_usecs, pad (32 bytes on 32- and 64-bit).
SPI_IOC_TRANSFER = struct.Struct("=QQIIHBBBBBB")


def SPI_IOC_MESSAGE(n: int) -> int:  # noqa: N802 - the C macro's name
    return _IOW("k", 0, n * SPI_IOC_TRANSFER.size)


BUFSIZ = 4096  # spidev's module parameter: the most data one message moves each way
_DMA_ALIGN = 8  # ARCH_DMA_MINALIGN on x86_64: each transfer's share of the bounce buffer
_INT_MAX = 0x7FFFFFFF
_U8, _U32 = struct.Struct("=B"), struct.Struct("=I")


@dataclass(frozen=True)
class SpiController:
    """What the emulated controller can do (struct spi_controller's capability fields)."""

    mode_bits: int = SPI_CPHA | SPI_CPOL | SPI_CS_HIGH | SPI_LSB_FIRST | SPI_LOOP
    bits_per_word: frozenset[int] = frozenset({8, 16, 24, 32})
    max_speed_hz: int = 50_000_000
    min_speed_hz: int = 0


class SpiWire(NamedTuple):
    """How one transfer is clocked, for peripherals that care."""

    mode: int  # SPI_CPHA | SPI_CPOL ... as set by the program
    speed_hz: int
    bits_per_word: int


class SpiPeripheral:
    """A chip behind a chip select.  Bytes are as on the wire: MSB first, whatever the
    program's word size or bit order (the controller converts)."""

    #: The clock modes (CPOL << 1 | CPHA) it can follow; in another it sees nothing.
    modes: ClassVar[frozenset[int]] = frozenset({0, 1, 2, 3})

    def select(self) -> None:
        """Chip select asserted: a new command frame begins."""

    def exchange(self, mosi: bytes, wire: SpiWire) -> bytes:
        """Clock `mosi` in; return as many bytes clocked out.  Default: MISO idle."""
        return b"\xff" * len(mosi)

    def deselect(self) -> None:
        """Chip select released: the frame ends (many chips act now)."""


class _Transfer(NamedTuple):
    """One struct spi_ioc_transfer, after spidev read it."""

    tx_buf: int
    rx_buf: int
    len: int
    speed_hz: int
    delay_usecs: int
    bits_per_word: int
    cs_change: int
    tx_nbits: int
    rx_nbits: int
    word_delay_usecs: int
    pad: int = 0


class SpiStats:
    """Counters a test or `pykld sysctl` reads: messages (ioctls and read/write calls that
    reached the wire), transfers, bytes clocked, chip-select frames."""

    __slots__ = ("messages", "transfers", "bytes", "frames")

    def __init__(self) -> None:
        self.messages = self.transfers = self.bytes = self.frames = 0


_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _word_size(bits: int) -> int:
    return 1 if bits <= 8 else 2 if bits <= 16 else 4


def _to_wire(data: bytes, bits: int, lsb_first: bool) -> bytes:
    """Words in memory (host order, 1, 2 or 4 bytes each) to the bytes the wire carries."""
    if bits == 8:
        return data.translate(_REVERSED) if lsb_first else data
    size, width, mask = _word_size(bits), bits // 8, (1 << bits) - 1
    out = bytearray()
    for at in range(0, len(data), size):
        word = int.from_bytes(data[at : at + size], "little") & mask
        if lsb_first:
            word = int(f"{word:0{bits}b}"[::-1], 2)
        out += word.to_bytes(width, "big")
    return bytes(out)


def _from_wire(wire: bytes, bits: int, lsb_first: bool) -> bytes:
    """The inverse of _to_wire: received bytes to words in memory."""
    if bits == 8:
        return wire.translate(_REVERSED) if lsb_first else wire
    size, width = _word_size(bits), bits // 8
    out = bytearray()
    for at in range(0, len(wire), width):
        word = int.from_bytes(wire[at : at + width], "big")
        if lsb_first:
            word = int(f"{word:0{bits}b}"[::-1], 2)
        out += word.to_bytes(size, "little")
    return bytes(out)


class SpiDev(CharacterDevice):
    """One spi_device and its spidev node.  Mode, word size and speed belong to the
    device, shared by every open file, as in spidev."""

    seekable = False  # spidev does stream_open(): no offsets

    def __init__(self, peripheral: SpiPeripheral, *, mode: int = 0, max_speed_hz: int = 1_000_000,
                 controller: SpiController | None = None, bufsiz: int = BUFSIZ) -> None:
        self.peripheral = peripheral
        self.controller = controller or SpiController()
        self.bufsiz = bufsiz
        self.mode = mode & SPI_MODE_MASK
        self.bits_per_word = 8
        self.max_speed_hz = min(max_speed_hz, self.controller.max_speed_hz)  # spi_setup caps it
        self.speed_hz = self.max_speed_hz  # spidev->speed_hz: what WR_MAX_SPEED_HZ stored
        self.selected = False  # chip select held after a message whose last transfer had cs_change
        self.opens = 0
        self.stats = SpiStats()
        self.cdev: Cdev | None = None

    # -- open/close, read/write ------------------------------------------------------

    def open(self, file: OpenFile) -> None:
        self.opens += 1

    def close(self, file: OpenFile) -> None:
        self.opens -= 1
        if not self.opens:
            self._deselect()  # nobody left to end a frame a cs_change kept open

    def read(self, file: OpenFile, uio: Uio) -> None:
        """A half-duplex read of resid bytes (MOSI idle low), chip select for this call."""
        if uio.resid > self.bufsiz:
            raise OSError(errno.EMSGSIZE, f"read of {uio.resid} bytes: spidev's bufsiz is {self.bufsiz}")
        transfer = _Transfer(0, 1, uio.resid, self.speed_hz, 0, 0, 0, 0, 0, 0)
        uio.uiomove(self._message([transfer], [b""])[0])

    def write(self, file: OpenFile, uio: Uio) -> None:
        if uio.resid > self.bufsiz:
            raise OSError(errno.EMSGSIZE, f"write of {uio.resid} bytes: spidev's bufsiz is {self.bufsiz}")
        data = uio.move_in()
        self._message([_Transfer(1, 0, len(data), self.speed_hz, 0, 0, 0, 0, 0, 0)], [data])

    # -- ioctl ---------------------------------------------------------------------------

    def ioctl(self, file: OpenFile, cmd: int, data: bytearray | int) -> int | None:
        decoded = ioctl_decode(cmd)
        if decoded.group != SPI_IOC_MAGIC:
            raise OSError(errno.ENOTTY, f"ioctl {cmd:#x} is not spidev's")
        handler = self._IOCTLS.get(cmd)
        if handler is not None:
            assert isinstance(data, bytearray)
            handler(self, data)
            return 0
        if decoded.nr != 0 or decoded.direction != IOC_IN:
            raise OSError(errno.ENOTTY, f"ioctl {cmd:#x}: no such spidev command")
        if decoded.size % SPI_IOC_TRANSFER.size:
            raise OSError(errno.EINVAL, f"SPI_IOC_MESSAGE of {decoded.size} bytes: not whole transfers")
        if not decoded.size:
            return 0  # SPI_IOC_MESSAGE(0): nothing to do
        assert isinstance(data, bytearray)
        return self._ioc_message([_Transfer(*fields) for fields in SPI_IOC_TRANSFER.iter_unpack(data)])

    def _rd_mode(self, data: bytearray) -> None:
        _U8.pack_into(data, 0, self.mode & SPI_MODE_MASK & 0xFF)

    def _rd_mode32(self, data: bytearray) -> None:
        _U32.pack_into(data, 0, self.mode & SPI_MODE_MASK)

    def _wr_mode(self, data: bytearray) -> None:
        value = data[0] if len(data) == 1 else _U32.unpack_from(data)[0]
        if value & ~SPI_MODE_MASK:
            raise OSError(errno.EINVAL, f"mode {value:#x} has bits spidev does not know")
        self._setup(mode=value | (self.mode & ~SPI_MODE_MASK))

    def _rd_lsb_first(self, data: bytearray) -> None:
        data[0] = 1 if self.mode & SPI_LSB_FIRST else 0

    def _wr_lsb_first(self, data: bytearray) -> None:
        self._setup(mode=self.mode | SPI_LSB_FIRST if data[0] else self.mode & ~SPI_LSB_FIRST)

    def _rd_bits_per_word(self, data: bytearray) -> None:
        data[0] = self.bits_per_word

    def _wr_bits_per_word(self, data: bytearray) -> None:
        self._setup(bits_per_word=data[0] or 8)  # spi_setup: 0 means 8

    def _rd_max_speed_hz(self, data: bytearray) -> None:
        _U32.pack_into(data, 0, self.speed_hz)

    def _wr_max_speed_hz(self, data: bytearray) -> None:
        (speed,) = _U32.unpack_from(data)
        if speed == 0:
            raise OSError(errno.EINVAL, "max speed 0 Hz")
        self.speed_hz = speed  # the value asked for, which RD returns; transfers are capped

    def _setup(self, mode: int | None = None, bits_per_word: int | None = None) -> None:
        """spi_setup(): refuse what the controller cannot do, and change nothing then."""
        ctlr = self.controller
        if mode is not None:
            mode &= ~(_WIDE_LINES & ~ctlr.mode_bits)  # dual/quad it lacks: dropped, as Linux does
            bad = mode & ~ctlr.mode_bits
            if bad:
                raise OSError(errno.EINVAL, f"the controller does not support mode bits {bad:#x}")
        if bits_per_word is not None and bits_per_word not in ctlr.bits_per_word:
            raise OSError(errno.EINVAL, f"the controller does not do {bits_per_word} bits per word "
                                        f"(it does {sorted(ctlr.bits_per_word)})")
        if mode is not None:
            self.mode = mode
        if bits_per_word is not None:
            self.bits_per_word = bits_per_word

    _IOCTLS: ClassVar[dict[int, Callable[[SpiDev, bytearray], None]]] = {
        SPI_IOC_RD_MODE: _rd_mode, SPI_IOC_RD_MODE32: _rd_mode32,
        SPI_IOC_WR_MODE: _wr_mode, SPI_IOC_WR_MODE32: _wr_mode,
        SPI_IOC_RD_LSB_FIRST: _rd_lsb_first, SPI_IOC_WR_LSB_FIRST: _wr_lsb_first,
        SPI_IOC_RD_BITS_PER_WORD: _rd_bits_per_word, SPI_IOC_WR_BITS_PER_WORD: _wr_bits_per_word,
        SPI_IOC_RD_MAX_SPEED_HZ: _rd_max_speed_hz, SPI_IOC_WR_MAX_SPEED_HZ: _wr_max_speed_hz,
    }

    def _ioc_message(self, transfers: list[_Transfer]) -> int:
        """spidev_message(): bounce-buffer limits and every tx copyin first (a CUSE retry
        runs this again, so nothing may reach the wire before), then the wire, then rx out."""
        total = tx_total = rx_total = 0
        tx_ranges: list[tuple[int, int]] = []
        too_big = None
        for index, t in enumerate(transfers):
            aligned = -(-t.len // _DMA_ALIGN) * _DMA_ALIGN
            total += t.len
            rx_total += aligned if t.rx_buf else 0
            tx_total += aligned if t.tx_buf else 0
            if total > _INT_MAX or rx_total > self.bufsiz or tx_total > self.bufsiz:
                too_big = index
                break
            if t.tx_buf and t.len:
                tx_ranges.append((t.tx_buf, t.len))
        fetched = iter(copyin_many(tx_ranges))  # a bad pointer before the oversized one: EFAULT
        if too_big is not None:
            raise OSError(errno.EMSGSIZE, f"transfer {too_big}: the message needs more than "
                                          f"spidev's bufsiz ({self.bufsiz}) bytes each way")
        tx = [next(fetched) if t.tx_buf and t.len else b"" for t in transfers]
        rx = self._message(transfers, tx)
        for t, data in zip(transfers, rx, strict=True):
            if t.rx_buf and t.len:
                copyout(t.rx_buf, data)
        return total

    # -- the wire --------------------------------------------------------------------------

    def _validate(self, t: _Transfer) -> SpiWire:
        """__spi_validate() for one transfer: its word size and speed, or EINVAL."""
        bits = t.bits_per_word or self.bits_per_word
        speed = min(t.speed_hz or self.speed_hz or self.max_speed_hz, self.controller.max_speed_hz)
        if bits not in self.controller.bits_per_word:
            raise OSError(errno.EINVAL, f"{bits} bits per word: the controller does not do them")
        if t.len % _word_size(bits):
            raise OSError(errno.EINVAL, f"a transfer of {t.len} bytes is not whole {bits}-bit words")
        if self.controller.min_speed_hz and speed < self.controller.min_speed_hz:
            raise OSError(errno.EINVAL, f"{speed} Hz is below the controller's minimum")
        for buf, nbits, lines in ((t.tx_buf, t.tx_nbits, "tx"), (t.rx_buf, t.rx_nbits, "rx")):
            if buf and nbits not in (0, 1):  # dual/quad need mode bits this controller lacks
                raise OSError(errno.EINVAL, f"{lines}_nbits {nbits}: the device is not set up for it")
        return SpiWire(self.mode, speed, bits)

    def _message(self, transfers: list[_Transfer], tx: list[bytes]) -> list[bytes]:
        """spi_sync(): validate every transfer, then clock them with chip select held
        from the first to the last (cs_change breaks it between two, or keeps it after
        the last).  Returns what each transfer received, in memory's word format."""
        wires = [self._validate(t) for t in transfers]
        lsb_first = bool(self.mode & SPI_LSB_FIRST)
        received = []
        self.stats.messages += 1
        for index, (t, wire, data) in enumerate(zip(transfers, wires, tx, strict=True)):
            if not self.selected:
                self._select()
            mosi = _to_wire(data.ljust(t.len, b"\0"), wire.bits_per_word, lsb_first)
            miso = self._clock(mosi, wire)
            received.append(_from_wire(miso, wire.bits_per_word, lsb_first))
            self.stats.transfers += 1
            self.stats.bytes += t.len
            delay = t.delay_usecs + t.word_delay_usecs * (t.len // _word_size(wire.bits_per_word))
            if delay:
                time.sleep(delay / 1e6)
            last = index == len(transfers) - 1
            if bool(t.cs_change) != last:  # cs_change: a break between transfers, a hold after the last
                self._deselect()
        return received

    def _clock(self, mosi: bytes, wire: SpiWire) -> bytes:
        if wire.mode & SPI_LOOP:
            return mosi
        if not mosi or wire.mode & 3 not in self.peripheral.modes:
            return b"\xff" * len(mosi)
        miso = bytes(self.peripheral.exchange(mosi, wire))
        if len(miso) != len(mosi):
            raise TypeError(f"{type(self.peripheral).__name__}.exchange returned {len(miso)} bytes "
                            f"for {len(mosi)}")
        return miso

    def _select(self) -> None:
        self.selected = True
        self.stats.frames += 1
        self.peripheral.select()

    def _deselect(self) -> None:
        if self.selected:
            self.selected = False
            self.peripheral.deselect()

    def destroy(self) -> None:
        if self.cdev is not None:
            self.cdev.destroy()


def make_spidev(peripheral: SpiPeripheral, bus: int, cs: int, *, uid: int = 0, gid: int = 0,
                perms: int = 0o600, **settings: object) -> SpiDev:
    """Publish `peripheral` as /dev/spidev`bus`.`cs` (call from a module's LOAD).
    `settings`: SpiDev's mode, max_speed_hz, controller and bufsiz."""
    device = SpiDev(peripheral, **settings)  # type: ignore[arg-type]
    device.cdev = make_dev(device, f"spidev{bus}.{cs}", uid, gid, perms)
    node = f"dev.spidev.{bus}.{cs}"
    for name, get, descr in (
            ("mode", lambda: device.mode, "SPI mode bits, as SPI_IOC_RD_MODE32 reads them"),
            ("max_speed_hz", lambda: device.speed_hz, "the speed SPI_IOC_WR_MAX_SPEED_HZ set"),
            ("bits_per_word", lambda: device.bits_per_word, "the word size SPI_IOC_WR_BITS_PER_WORD set"),
            ("messages", lambda: device.stats.messages, "SPI_IOC_MESSAGEs, reads and writes that reached the wire"),
            ("transfers", lambda: device.stats.transfers, "transfers clocked"),
            ("bytes", lambda: device.stats.bytes, "bytes clocked (each way)"),
            ("frames", lambda: device.stats.frames, "chip-select assertions")):
        sysctl_add(f"{node}.{name}", "uint", get, descr=descr)
    return device
