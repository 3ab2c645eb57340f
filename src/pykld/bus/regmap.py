"""The common I2C chip: a pointer register, then registers read and written from it on.

A write's first byte sets the pointer; the bytes after it are stored into the
registers from the pointer on; a read returns the registers from the pointer
on.  Registers are `width` bytes, most significant byte first on the wire
(TMP102: 2; an EEPROM: 1).  After each whole register the pointer moves to
`next_pointer(reg, writing)`: the next register by default, or nowhere
(`auto_increment = False`); an EEPROM overrides it to wrap writes within a page.
A subclass gives `get(reg)` and, for writable registers, `set(reg, value)`.
"""

from __future__ import annotations

from typing import ClassVar

from pykld.bus.i2c import I2CPeripheral


class RegisterMap(I2CPeripheral):
    size: ClassVar[int] = 256  # registers; the pointer byte is taken modulo this
    width: ClassVar[int] = 1  # bytes per register
    auto_increment: ClassVar[bool] = True

    pointer = 0
    _sent = 0  # bytes of the register at the pointer a read has already had (width > 1)

    def get(self, reg: int) -> int:
        """The value of register `reg`."""
        raise NotImplementedError

    def set(self, reg: int, value: int) -> None:
        """The master wrote `value` to register `reg`; by default the register is read-only
        and the write is dropped (the chip still ACKs it, as real chips do)."""

    def next_pointer(self, reg: int, writing: bool) -> int:
        return (reg + 1) % self.size if self.auto_increment else reg

    def write(self, data: bytes) -> None:
        if not data:  # a quick write: an address probe
            return
        self.pointer, self._sent = data[0] % self.size, 0
        width = self.width
        for at in range(1, len(data) - width + 1, width):  # a trailing partial register is dropped
            self.set(self.pointer, int.from_bytes(data[at : at + width], "big"))
            self.pointer = self.next_pointer(self.pointer, writing=True)

    def read(self, count: int) -> bytes:
        out = bytearray()
        while len(out) < count:
            value = self.get(self.pointer).to_bytes(self.width, "big")
            piece = value[self._sent : self._sent + count - len(out)]
            out += piece
            self._sent += len(piece)
            if self._sent == self.width:
                self.pointer, self._sent = self.next_pointer(self.pointer, writing=False), 0
        return bytes(out)

    def stop(self) -> None:
        self._sent = 0  # the next read starts with a register's first byte
