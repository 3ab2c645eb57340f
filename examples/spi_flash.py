"""spi_flash: a Winbond W25Q64 SPI NOR flash (8 MiB) on /dev/spidev0.0.

    import spidev                                   # PyPI's spidev
    s = spidev.SpiDev(); s.open(0, 0); s.max_speed_hz = 1_000_000
    s.xfer2([0x9F, 0, 0, 0])                        # [255, 0xEF, 0x40, 0x17]: JEDEC ID
    s.xfer2([0x06]); s.xfer2([0x02, 0, 0x10, 0] + list(b"hello"))   # WREN, page program at 0x1000
    while s.xfer2([0x05, 0])[1] & 1: pass           # status register: wait while WIP
    s.xfer2([0x03, 0, 0x10, 0] + [0] * 5)[4:]       # read: b"hello"

Commands (datasheet W25Q64FV): 9F JEDEC ID, 90 manufacturer/device ID, AB release
power-down / device ID, 4B unique ID, 05/35 status registers 1/2, 01 write status,
06 WREN, 04 WRDI, 03 read, 0B fast read, 02 page program (256-byte pages: data past
the page's end wraps to its start), 20 4 KiB sector erase, 52 32 KiB and D8 64 KiB
block erase, C7/60 chip erase, B9 power-down.  As on the chip: program
and erase need WEL (WREN) and act when chip select goes high after the last whole
byte of a complete command; programming only clears bits; while WIP is set every
command but the status reads is ignored, and WEL clears when the operation ends;
in power-down only AB is heard.  WIP lasts the datasheet's typical times (page
0.7 ms, sector 45 ms, 32K 120 ms, 64K 150 ms, chip 20 s, status write 10 ms) times
the sysctl dev.w25q64.0.time_scale (0: instant).  The block-protect bits are kept
in the status register but do not protect anything.

sysctl nodes, dev.w25q64.0.*: status (SR1, read-only), time_scale, file (the image
that backs the flash: setting a path maps that file, created or padded to 8 MiB with
0xFF, and its bytes become the chip's; "" goes back to memory, keeping the contents),
and the counters reads, programs, erases.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time

from pykld import M_WAITOK, MallocType, Module, free, malloc, sysctl_add
from pykld.bus.spi import SpiPeripheral, SpiWire, make_spidev

SIZE = 8 << 20
PAGE = 256
JEDEC_ID = bytes([0xEF, 0x40, 0x17])  # Winbond, SPI NOR, 64 Mbit
DEVICE_ID = 0x16
UNIQUE_ID = bytes.fromhex("d1640c2bd3594a2f")
M_W25Q = MallocType("w25q64", description="W25Q64 array without a backing file")

SR_WIP, SR_WEL = 0x01, 0x02
# opcode: bytes before the data phase (the opcode, address or dummy bytes)
HEADER = {0x03: 4, 0x0B: 5, 0x02: 4, 0x20: 4, 0x52: 4, 0xD8: 4, 0x90: 4, 0xAB: 4, 0x4B: 5}
# opcode: the frame's exact length for commands that act at chip-select high
COMPLETE = {0x06: 1, 0x04: 1, 0xB9: 1, 0xC7: 1, 0x60: 1, 0x20: 4, 0x52: 4, 0xD8: 4}
ID_READS = {0x9F: JEDEC_ID, 0x90: bytes([0xEF, DEVICE_ID]), 0xAB: bytes([DEVICE_ID]), 0x4B: UNIQUE_ID}
ERASE = {0x20: 4 << 10, 0x52: 32 << 10, 0xD8: 64 << 10, 0xC7: SIZE, 0x60: SIZE}
TYPICAL_S = {0x02: 0.0007, 0x20: 0.045, 0x52: 0.120, 0xD8: 0.150, 0xC7: 20.0, 0x60: 20.0, 0x01: 0.010}
STATUS_READS = (0x05, 0x35)


class W25Q64(SpiPeripheral):
    modes = frozenset({0, 3})

    def __init__(self) -> None:
        self.array: bytearray | mmap.mmap = self._blank()
        self.file = ""
        self.lock = threading.Lock()  # the bus's operations against the sysctl that swaps the array
        self.sr = bytearray(2)  # SR1 without WIP and WEL; SR2
        self.wel = False
        self.busy_until = 0.0
        self.time_scale = 1.0
        self.powered_down = False
        self.reads = self.programs = self.erases = 0
        self.select()

    @staticmethod
    def _blank() -> bytearray:
        array = malloc(SIZE, M_W25Q, M_WAITOK)
        assert array is not None
        array[:] = b"\xff" * SIZE
        return array

    def busy(self) -> bool:
        if self.busy_until and time.monotonic() >= self.busy_until:
            self.busy_until = 0.0
            self.wel = False  # the operation ended: WEL clears
        return bool(self.busy_until)

    def status(self) -> int:
        busy = self.busy()
        return self.sr[0] | (SR_WEL if self.wel else 0) | (SR_WIP if busy else 0)

    # -- one chip-select frame: an opcode, its header (address, dummies), its data ------

    def select(self) -> None:
        self.cmd: int | None = None
        self.header = bytearray()
        self.count = 0  # bytes clocked in this frame
        self.page = bytearray(b"\xff" * PAGE)  # page program's latch, by offset in the page

    def exchange(self, mosi: bytes, wire: SpiWire) -> bytes:
        with self.lock:
            miso = bytearray()
            pos = 0
            while pos < len(mosi):
                if self.cmd is None:
                    self.cmd = self._accept(mosi[pos])
                    take = mosi[pos : pos + 1]
                    miso += b"\xff"
                elif self.count < HEADER.get(self.cmd, 1):
                    take = mosi[pos : pos + HEADER[self.cmd] - self.count]
                    self.header += take
                    miso += b"\xff" * len(take)
                else:
                    take = mosi[pos:]
                    miso += self._data(take, self.count - HEADER.get(self.cmd, 1))
                self.count += len(take)
                pos += len(take)
            return bytes(miso)

    def _accept(self, opcode: int) -> int:
        """The frame's command, or -1: ignored to the end of the frame."""
        if self.powered_down:
            return opcode if opcode == 0xAB else -1
        if opcode not in STATUS_READS and self.busy():
            return -1
        return opcode

    def _address(self) -> int:
        return int.from_bytes(self.header[:3], "big")

    def _data(self, mosi: bytes, at: int) -> bytes:
        """The data phase of the frame's command: `mosi` from byte `at` of it on."""
        n, cmd = len(mosi), self.cmd
        if cmd in STATUS_READS:
            return bytes([self.status() if cmd == 0x05 else self.sr[1]]) * n
        if cmd in (0x03, 0x0B):
            self.reads += at == 0
            start = (self._address() + at) % SIZE
            out = bytes(self.array[start : start + n])
            while len(out) < n:  # past the last byte the address wraps to 0
                out += bytes(self.array[: n - len(out)])
            return out
        if cmd == 0x02:
            if n > PAGE:  # more than a page: only the last 256 bytes stay latched
                mosi, at = mosi[-PAGE:], at + n - PAGE
            offset = self._address() + at
            for k, value in enumerate(mosi):
                self.page[(offset + k) % PAGE] = value
        elif cmd == 0x01:
            self.header += mosi  # the new SR1 and SR2
        elif cmd in ID_READS:
            ident = ID_READS[cmd]
            if cmd == 0x90 and self.header[2] & 1:
                ident = ident[::-1]
            if cmd in (0x90, 0xAB):  # these repeat for as long as the clock runs
                return bytes(ident[(at + k) % len(ident)] for k in range(n))
            return (ident[at:] + b"\xff" * n)[:n]
        return b"\xff" * n

    def deselect(self) -> None:
        """Chip select high: a complete command acts now."""
        with self.lock:
            try:
                self._complete(self.cmd, self.count)
            finally:
                self.select()

    def _complete(self, cmd: int | None, count: int) -> None:
        if cmd == 0xAB:
            self.powered_down = False
        elif cmd is None or count != COMPLETE.get(cmd, count):
            return  # not whole: the chip ignores it
        elif cmd == 0xB9:
            self.powered_down = True
        elif cmd in (0x06, 0x04):
            self.wel = cmd == 0x06
        elif not self.wel:
            return
        elif cmd == 0x02 and count > 4:
            base = self._address() & ~(PAGE - 1)
            old = self.array[base : base + PAGE]
            # programming only clears bits
            self.array[base : base + PAGE] = bytes(a & b for a, b in zip(old, self.page, strict=True))
            self.programs += 1
            self._start(cmd)
        elif cmd in ERASE:
            size = ERASE[cmd]
            start = self._address() & ~(size - 1) if size != SIZE else 0
            self.array[start : start + size] = b"\xff" * size
            self.erases += 1
            self._start(cmd)
        elif cmd == 0x01 and count in (2, 3):
            self.sr[0] = self.header[0] & 0xFC  # BP0-2, TB, SEC, SRP0; WIP and WEL are not written
            if count == 3:
                self.sr[1] = self.header[1] & 0x43  # SRP1, QE, CMP
            self._start(cmd)

    def _start(self, cmd: int) -> None:
        """An erase, program or status write runs for its time; WEL clears at its end."""
        self.busy_until = time.monotonic() + TYPICAL_S[cmd] * self.time_scale
        if not self.time_scale:
            self.busy_until, self.wel = 0.0, False

    # -- the backing file -------------------------------------------------------------

    def set_file(self, path: str) -> None:
        """Back the array with `path` (its bytes become the chip's), or with memory again
        (keeping the contents) when `path` is empty."""
        if path:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size > SIZE:
                    raise OSError(errno.EINVAL, f"{path} holds {size} bytes; a W25Q64 holds {SIZE}")
                if size < SIZE:
                    os.pwrite(fd, b"\xff" * (SIZE - size), size)  # the rest reads as erased
                array: bytearray | mmap.mmap = mmap.mmap(fd, SIZE)
            finally:
                os.close(fd)
        elif isinstance(self.array, mmap.mmap):
            array = self._blank()
            array[:] = self.array
        else:
            return
        with self.lock:
            old, self.array, self.file = self.array, array, path
        self._release(old)

    @staticmethod
    def _release(array: bytearray | mmap.mmap) -> None:
        if isinstance(array, mmap.mmap):
            array.close()  # its pages are the file's already
        else:
            free(array)  # type: ignore[arg-type]

    def release(self) -> None:
        self._release(self.array)


class SpiFlashModule(Module):
    name = "spi_flash"

    def load(self) -> None:
        self.flash = flash = W25Q64()
        self.spidev = make_spidev(flash, 0, 0, perms=0o666, max_speed_hz=50_000_000)
        node = "dev.w25q64.0"
        sysctl_add(f"{node}.status", "uint", flash.status, descr="status register 1 (WIP, WEL, BP0-2, TB, SEC, SRP0)")
        sysctl_add(f"{node}.time_scale", "float", lambda: flash.time_scale, self.set_time_scale,
                   "how long erases and programs take, in datasheet typical times (0: instant)")
        sysctl_add(f"{node}.file", "str", lambda: flash.file, flash.set_file,
                   "the image file that backs the array (\"\": memory)")
        for counter in ("reads", "programs", "erases"):
            sysctl_add(f"{node}.{counter}", "uint", lambda c=counter: getattr(flash, c), descr=f"{counter} done")

    def set_time_scale(self, value: float) -> None:
        if not 0 <= value <= 1000:
            raise OSError(errno.EINVAL, "time_scale is from 0 (instant) to 1000")
        self.flash.time_scale = value

    def unload(self) -> None:
        self.spidev.destroy()
        self.flash.release()
