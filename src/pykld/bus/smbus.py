"""SMBus transactions as I2C messages, exactly as Linux's i2c_smbus_xfer_emulated() makes them.

An adapter without native SMBus (every adapter here) turns each I2C_SMBUS call
into one or two messages; a chip sees only those messages, so it answers
i2cget and i2ctransfer alike.  The table in hardware.md §2.4 is this file.
PEC (I2C_PEC on the descriptor) is added to writes and checked on reads by the
same rules as i2c-core-smbus.c: a chip that does not compute it makes a read
fail with EBADMSG, as it would on real hardware.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from pykld.bus.msg import I2C_M_RD, I2C_M_RECV_LEN, IicMsg

I2C_SMBUS_READ, I2C_SMBUS_WRITE = 1, 0
I2C_SMBUS_QUICK = 0
I2C_SMBUS_BYTE = 1
I2C_SMBUS_BYTE_DATA = 2
I2C_SMBUS_WORD_DATA = 3
I2C_SMBUS_PROC_CALL = 4
I2C_SMBUS_BLOCK_DATA = 5
I2C_SMBUS_I2C_BLOCK_BROKEN = 6
I2C_SMBUS_BLOCK_PROC_CALL = 7
I2C_SMBUS_I2C_BLOCK_DATA = 8
I2C_SMBUS_BLOCK_MAX = 32
I2C_CLIENT_PEC = 0x04

Transfer = Callable[[list[IicMsg]], int]


def smbus_pec(data: bytes, crc: int = 0) -> int:
    """SMBus Packet Error Code: CRC-8, polynomial x^8 + x^2 + x + 1 (0x07), as i2c_smbus_pec()."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _msg_pec(msg: IicMsg, crc: int = 0) -> int:
    """The PEC over a message: its 8-bit address byte, then its bytes (i2c_smbus_msg_pec)."""
    return smbus_pec(bytes([((msg.addr << 1) | (msg.flags & I2C_M_RD)) & 0xFF]) + bytes(msg.buf), crc)


def _einval(why: str) -> OSError:
    return OSError(errno.EINVAL, why, None)


def smbus_xfer(transfer: Transfer, addr: int, flags: int, read_write: int, command: int, size: int,
               data: bytearray | None) -> None:
    """One SMBus transaction through `transfer` (the adapter's i2c_transfer).  `data` is
    the 34-byte union i2c_smbus_data, updated in place for reads; None where the
    transaction has none (QUICK, BYTE write).  Raises the errno Linux returns."""
    block = data if data is not None else bytearray(I2C_SMBUS_BLOCK_MAX + 2)
    wants_pec = bool(flags & I2C_CLIENT_PEC) and size not in (I2C_SMBUS_QUICK, I2C_SMBUS_I2C_BLOCK_DATA)
    out = bytearray([command])
    read_len: int | None = 0 if read_write == I2C_SMBUS_READ else None  # None: a write only
    first_flags = flags
    if size == I2C_SMBUS_QUICK:
        out = bytearray()
        first_flags |= I2C_M_RD if read_write == I2C_SMBUS_READ else 0
        read_len = None
    elif size == I2C_SMBUS_BYTE:
        if read_write == I2C_SMBUS_READ:  # a read alone, no command byte
            out, first_flags, read_len = bytearray(1), flags | I2C_M_RD, None
    elif size == I2C_SMBUS_BYTE_DATA:
        if read_write == I2C_SMBUS_READ:
            read_len = 1
        else:
            out.append(block[0])
    elif size in (I2C_SMBUS_WORD_DATA, I2C_SMBUS_PROC_CALL):
        if size == I2C_SMBUS_PROC_CALL:
            read_write = I2C_SMBUS_READ
        if read_write == I2C_SMBUS_READ:
            read_len = 2
        if size == I2C_SMBUS_PROC_CALL or read_write == I2C_SMBUS_WRITE:
            out += block[0:2]  # the word, low byte first on the wire
    elif size in (I2C_SMBUS_BLOCK_DATA, I2C_SMBUS_BLOCK_PROC_CALL):
        if size == I2C_SMBUS_BLOCK_PROC_CALL:
            read_write = I2C_SMBUS_READ
        if size == I2C_SMBUS_BLOCK_PROC_CALL or read_write == I2C_SMBUS_WRITE:
            if block[0] > I2C_SMBUS_BLOCK_MAX:
                raise _einval(f"invalid block write size {block[0]}")
            out += block[0 : block[0] + 1]
        read_len = -1 if read_write == I2C_SMBUS_READ else None  # -1: the chip sends the length
    elif size == I2C_SMBUS_I2C_BLOCK_DATA:
        if block[0] > I2C_SMBUS_BLOCK_MAX:
            raise _einval(f"invalid block size {block[0]}")
        if read_write == I2C_SMBUS_READ:
            read_len = block[0]
        else:
            out += block[1 : block[0] + 1]
    else:
        raise OSError(errno.EOPNOTSUPP, f"unsupported SMBus transaction {size}", None)

    msgs = [IicMsg(addr, first_flags, out)]
    if read_len is not None:
        if read_len == -1:
            # The length byte is all the chip is asked for; it adds the count it sends.
            msgs.append(IicMsg(addr, flags | I2C_M_RD | I2C_M_RECV_LEN, bytearray(1)))
        else:
            msgs.append(IicMsg(addr, flags | I2C_M_RD, bytearray(read_len)))
    partial_pec = 0
    if wants_pec:
        if not msgs[0].read:
            if len(msgs) == 1:
                out.append(_msg_pec(msgs[0]))
            else:
                partial_pec = _msg_pec(msgs[0])
        last = msgs[-1]
        if last.read:  # ask for the PEC byte after the data
            last.buf = bytearray(len(last.buf) + 1)
    if transfer(msgs) != len(msgs):
        raise OSError(errno.EIO, "fewer messages completed than sent", None)
    last = msgs[-1]
    if wants_pec and last.read:
        received = last.buf.pop()
        if received != _msg_pec(last, partial_pec):
            raise OSError(errno.EBADMSG, f"bad PEC {received:#04x}", None)
    if read_write != I2C_SMBUS_READ:
        return
    reply = last.buf
    if size == I2C_SMBUS_BYTE:
        block[0] = reply[0]
    elif size == I2C_SMBUS_BYTE_DATA:
        block[0] = reply[0]
    elif size in (I2C_SMBUS_WORD_DATA, I2C_SMBUS_PROC_CALL):
        block[0:2] = reply[0:2]
    elif size == I2C_SMBUS_I2C_BLOCK_DATA:
        block[1 : block[0] + 1] = reply[: block[0]]
    elif size in (I2C_SMBUS_BLOCK_DATA, I2C_SMBUS_BLOCK_PROC_CALL):
        if reply[0] > I2C_SMBUS_BLOCK_MAX:
            raise OSError(errno.EPROTO, f"invalid block size returned: {reply[0]}", None)
        block[0 : reply[0] + 1] = reply[0 : reply[0] + 1]
