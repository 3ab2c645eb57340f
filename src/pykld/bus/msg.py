"""The unit of every I2C transfer: one message, as struct i2c_msg (Linux) and struct iic_msg (FreeBSD).

A transfer is a list of messages between one START and one STOP, with a
repeated START before each message after the first.  The flag values are
Linux's (<linux/i2c.h>); I2C_M_RD = 1 is FreeBSD's IIC_M_RD too.
"""

from __future__ import annotations

I2C_M_RD = 0x0001
I2C_M_TEN = 0x0010
I2C_M_DMA_SAFE = 0x0200
I2C_M_RECV_LEN = 0x0400
I2C_M_NO_RD_ACK = 0x0800
I2C_M_IGNORE_NAK = 0x1000
I2C_M_REV_DIR_ADDR = 0x2000
I2C_M_NOSTART = 0x4000
I2C_M_STOP = 0x8000


class IicMsg:
    """One message: to `addr` (7-bit, or 10-bit with I2C_M_TEN), `flags`, and `buf`:
    the bytes a write sends, or for a read the buffer the chip fills, its length
    the count the master clocks in.  For I2C_M_RECV_LEN the chip sends the count
    first: buf starts as len(buf) bytes ("extra" bytes: 1, or 2 with PEC) and ends
    as the count byte, that many data bytes, and the extras after the first."""

    __slots__ = ("addr", "flags", "buf")

    def __init__(self, addr: int, flags: int, buf: bytearray) -> None:
        self.addr = addr
        self.flags = flags
        self.buf = buf

    @property
    def read(self) -> bool:
        return bool(self.flags & I2C_M_RD)

    @property
    def recv_len(self) -> bool:
        return bool(self.flags & I2C_M_RECV_LEN)

    @property
    def target(self) -> tuple[int, bool]:
        """The address on the wire: a 7-bit address is what (addr << 1) leaves of it in a byte."""
        if self.flags & I2C_M_TEN:
            return self.addr & 0x3FF, True
        return self.addr & 0x7F, False

    def __repr__(self) -> str:
        kind = "R" if self.read else "W"
        return f"<IicMsg {kind} {self.addr:#04x} flags={self.flags:#06x} {bytes(self.buf).hex(' ')}>"
