"""An I2C adapter published as /dev/i2c-N with Linux's i2c-dev ABI, and the chips on it.

Strategy: everything reaches a chip as a transfer of messages, as i2c_transfer()
hands them to an adapter and iicbus_transfer() to a FreeBSD bus: read() and
write() make one message to the descriptor's I2C_SLAVE address, I2C_RDWR passes
the caller's array, and I2C_SMBUS becomes messages exactly as Linux's
i2c_smbus_xfer_emulated() makes them (smbus.py).  So a chip modelled once
answers i2cget, i2ctransfer and smbus2 alike.  Consecutive messages to one
address are one transaction for that chip (`I2CPeripheral.transfer`); an
address where nobody answers is a NAK, ENXIO, and the transfer ends there.

Every ioctl copies all the caller memory it needs in before the first message
reaches a chip: under CUSE the driver runs again after each round that fetches
memory (kernel/uaccess.py), and a chip must see each transfer once.  The errno
of each refusal, and its order, are i2c-dev.c's (Linux 6.1 to 6.18).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any, ClassVar

from pykld.bus.msg import I2C_M_RD, I2C_M_RECV_LEN, I2C_M_TEN, IicMsg
from pykld.bus.smbus import (
    I2C_CLIENT_PEC,
    I2C_SMBUS_BLOCK_MAX,
    I2C_SMBUS_BLOCK_PROC_CALL,
    I2C_SMBUS_BYTE,
    I2C_SMBUS_BYTE_DATA,
    I2C_SMBUS_I2C_BLOCK_BROKEN,
    I2C_SMBUS_I2C_BLOCK_DATA,
    I2C_SMBUS_PROC_CALL,
    I2C_SMBUS_QUICK,
    I2C_SMBUS_READ,
    I2C_SMBUS_WORD_DATA,
    I2C_SMBUS_WRITE,
    smbus_xfer,
)
from pykld.kpi import CharacterDevice, OpenFile, Uio, copyin, copyin_many, copyout, sysctl_add

# <linux/i2c-dev.h>: none of these is _IOC-encoded, so FUSE carries only the integer argument.
I2C_RETRIES = 0x0701
I2C_TIMEOUT = 0x0702
I2C_SLAVE = 0x0703
I2C_TENBIT = 0x0704
I2C_FUNCS = 0x0705
I2C_SLAVE_FORCE = 0x0706
I2C_RDWR = 0x0707
I2C_PEC = 0x0708
I2C_SMBUS = 0x0720
I2C_RDWR_IOCTL_MAX_MSGS = 42
MAX_MSG_LEN = 8192  # i2c-dev's "sane amount" for one message, read() and write()

# I2C_FUNCS bits (<linux/i2c.h>)
I2C_FUNC_I2C = 0x00000001
I2C_FUNC_10BIT_ADDR = 0x00000002
I2C_FUNC_SMBUS_PEC = 0x00000008
I2C_FUNC_SMBUS_EMUL_ALL = 0x0FFF8008  # every SMBus transaction, PEC included, and block proc call
#: What this adapter does: plain I2C, 10-bit addresses, every SMBus transaction with PEC.
FUNCS = I2C_FUNC_I2C | I2C_FUNC_10BIT_ADDR | I2C_FUNC_SMBUS_EMUL_ALL

ULONG = struct.Struct("=Q")
RDWR_DATA = struct.Struct("=QI4x")  # struct i2c_rdwr_ioctl_data { struct i2c_msg *msgs; u32 nmsgs; }
I2C_MSG = struct.Struct("=HHH2xQ")  # struct i2c_msg { u16 addr, flags, len; u8 *buf; }
SMBUS_DATA = struct.Struct("=BBxxIQ")  # struct i2c_smbus_ioctl_data { u8 read_write, command; u32 size; data* }
SMBUS_DATA_SIZE = I2C_SMBUS_BLOCK_MAX + 2  # union i2c_smbus_data
INT_MAX = (1 << 31) - 1


#: A chip's own sysctl node: (leaf, kind, get, set or None, description).
SysctlNode = tuple[str, str, Callable[[], Any], Callable[[Any], None] | None, str]


def _error(code: int, why: str) -> OSError:
    return OSError(code, why, None)


class I2CPeripheral:
    """One chip at one address, as the bus hands it transactions.

    Override `transfer` to see whole transactions (a list of IicMsg: fill the
    read messages' buffers), or the three stream operations the default
    `transfer` calls: `write(data)` for each write message, `read(n)` for each
    read message (twice for I2C_M_RECV_LEN: one byte for the count, then the
    rest), and `stop()` at the end.  Raise OSError(ENXIO) to NAK the address
    (a chip busy in its write cycle), OSError(EREMOTEIO) for a NAK of data.

    Its sysctl nodes live under dev.NAME.UNIT (`name`; the first unit free):
    desc, location (FreeBSD's %desc, %location), transfer and byte counters, and `sysctl_nodes()`.
    """

    name: ClassVar[str] = "i2c"
    description: ClassVar[str] = "I2C peripheral"

    transfers = messages = bytes_read = bytes_written = 0  # the master's view: read from / written to the chip
    unit = -1
    addr = -1

    def transfer(self, msgs: list[IicMsg]) -> None:
        try:
            for msg in msgs:
                if not msg.read:
                    self.write(bytes(msg.buf))
                elif msg.recv_len:  # the bus checks the count (1..32) afterwards
                    count = self.read(1)
                    msg.buf[:] = count + self.read(count[0] + len(msg.buf) - 1)
                else:
                    msg.buf[:] = self.read(len(msg.buf))
        finally:
            self.stop()

    def write(self, data: bytes) -> None:
        """The master wrote `data` (one message; empty for an SMBus quick write)."""

    def read(self, count: int) -> bytes:
        """The master reads `count` bytes; an idle bus reads 0xFF."""
        return b"\xff" * count

    def stop(self) -> None:
        """The transaction ended (STOP, or a repeated START to another chip)."""

    def sysctl_nodes(self) -> list[SysctlNode]:
        """Nodes of this chip beyond the counters, under its dev.NAME.UNIT."""
        return []

    # -- the bus's side ----------------------------------------------------------------

    def serve(self, msgs: list[IicMsg]) -> None:
        self.transfer(msgs)
        self.transfers += 1
        self.messages += len(msgs)
        for msg in msgs:
            if msg.read:
                self.bytes_read += len(msg.buf)
            else:
                self.bytes_written += len(msg.buf)

    def attach_sysctl(self, addr: int) -> None:
        self.addr = addr
        unit = 0
        while True:  # the first unit whose name is free, as a FreeBSD devclass numbers them
            try:
                sysctl_add(f"dev.{self.name}.{unit}.desc", "str", lambda: self.description, descr="what the chip is")
                break
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                unit += 1
        self.unit = unit
        nodes: list[SysctlNode] = [
            ("location", "str", lambda: f"addr={self.addr:#04x}", None, "address on the bus"),
            ("transfers", "uint", lambda: self.transfers, None, "transactions addressed to the chip"),
            ("messages", "uint", lambda: self.messages, None, "messages in those transactions"),
            ("bytes_read", "uint", lambda: self.bytes_read, None, "bytes the master read"),
            ("bytes_written", "uint", lambda: self.bytes_written, None, "bytes the master wrote"),
            *self.sysctl_nodes(),
        ]
        for leaf, kind, get, put, descr in nodes:
            sysctl_add(f"dev.{self.name}.{unit}.{leaf}", kind, get, put, descr)


class _Client:
    """What i2c-dev keeps per open file (its struct i2c_client): address and flags."""

    __slots__ = ("addr", "flags")

    def __init__(self) -> None:
        self.addr = 0
        self.flags = 0  # I2C_M_TEN, I2C_CLIENT_PEC


class I2CBus(CharacterDevice):
    """An I2C adapter: publish it with make_dev(bus, "i2c-N"), attach chips to it.

    `busy` addresses answer I2C_SLAVE with EBUSY, as addresses a kernel driver
    holds do (i2cdetect shows UU); I2C_SLAVE_FORCE takes them anyway.
    """

    seekable = False  # i2c-dev is a stream: no_llseek, every read and write a new transfer

    def __init__(self, funcs: int = FUNCS, busy: tuple[int, ...] = ()) -> None:
        self.funcs = funcs
        self.busy = set(busy)
        self.retries = 0
        self.timeout_ms = 1000  # i2c-core's default adapter timeout, HZ jiffies
        self.chips: dict[tuple[int, bool], I2CPeripheral] = {}

    def attach(self, addr: int, chip: I2CPeripheral, ten_bit: bool = False) -> I2CPeripheral:
        """Put `chip` at `addr` (7-bit, or 10-bit with ten_bit) and publish its sysctl nodes."""
        if not 0 <= addr <= (0x3FF if ten_bit else 0x7F):
            raise _error(errno.EINVAL, f"address {addr:#x} out of range")
        if (addr, ten_bit) in self.chips:
            raise _error(errno.EEXIST, f"address {addr:#x} taken")
        chip.attach_sysctl(addr)
        self.chips[addr, ten_bit] = chip
        return chip

    def transfer(self, msgs: list[IicMsg]) -> int:
        """i2c_transfer(): run `msgs` as one transfer; returns the count, or raises at a NAK."""
        start = 0
        while start < len(msgs):
            target = msgs[start].target
            end = start + 1
            while end < len(msgs) and msgs[end].target == target:
                end += 1
            chip = self.chips.get(target)
            if chip is None:
                raise _error(errno.ENXIO, f"no device at address {target[0]:#x}")
            chip.serve(msgs[start:end])
            for msg in msgs[start:end]:
                if msg.recv_len and not 1 <= msg.buf[0] <= I2C_SMBUS_BLOCK_MAX:
                    raise _error(errno.EPROTO, f"invalid block length {msg.buf[0]}")
            start = end
        return len(msgs)

    # -- the file operations of i2c-dev --------------------------------------------------

    def open(self, file: OpenFile) -> None:
        file.private = _Client()

    def read(self, file: OpenFile, uio: Uio) -> None:
        client: _Client = file.private
        msg = IicMsg(client.addr, (client.flags & I2C_M_TEN) | I2C_M_RD, bytearray(min(uio.resid, MAX_MSG_LEN)))
        self.transfer([msg])
        uio.move_out(bytes(msg.buf))

    def write(self, file: OpenFile, uio: Uio) -> None:
        client: _Client = file.private
        self.transfer([IicMsg(client.addr, client.flags & I2C_M_TEN, bytearray(uio.move_in(MAX_MSG_LEN)))])

    def ioctl(self, file: OpenFile, cmd: int, data: bytearray | int) -> int | None:
        handler = _IOCTLS.get(cmd)
        if handler is None or not isinstance(data, int):
            return super().ioctl(file, cmd, data)  # ENOTTY
        return handler(self, file.private, data & 0xFFFFFFFFFFFFFFFF)

    def set_slave(self, client: _Client, addr: int, force: bool) -> int:
        if addr > 0x3FF or (not client.flags & I2C_M_TEN and addr > 0x7F):
            raise _error(errno.EINVAL, f"address {addr:#x} out of range")
        if not force and addr in self.busy:
            raise _error(errno.EBUSY, f"address {addr:#x} is in use by a driver")
        client.addr = addr
        return 0

    def ioctl_slave(self, client: _Client, arg: int) -> int:
        return self.set_slave(client, arg, force=False)

    def ioctl_slave_force(self, client: _Client, arg: int) -> int:
        return self.set_slave(client, arg, force=True)

    def ioctl_tenbit(self, client: _Client, arg: int) -> int:
        client.flags = client.flags | I2C_M_TEN if arg else client.flags & ~I2C_M_TEN
        return 0

    def ioctl_pec(self, client: _Client, arg: int) -> int:
        client.flags = client.flags | I2C_CLIENT_PEC if arg else client.flags & ~I2C_CLIENT_PEC
        return 0

    def ioctl_retries(self, client: _Client, arg: int) -> int:
        if arg > INT_MAX:
            raise _error(errno.EINVAL, f"retries {arg} out of range")
        self.retries = arg
        return 0

    def ioctl_timeout(self, client: _Client, arg: int) -> int:
        if arg > INT_MAX:
            raise _error(errno.EINVAL, f"timeout {arg} out of range")
        self.timeout_ms = arg * 10  # in units of 10 ms, for historical reasons
        return 0

    def ioctl_funcs(self, client: _Client, arg: int) -> int:
        copyout(arg, ULONG.pack(self.funcs))  # an unsigned long: 8 bytes on x86_64
        return 0

    def ioctl_rdwr(self, client: _Client, arg: int) -> int:
        msgs_addr, nmsgs = RDWR_DATA.unpack(copyin(arg, RDWR_DATA.size))
        if not msgs_addr or nmsgs == 0:
            raise _error(errno.EINVAL, "I2C_RDWR without messages")
        if nmsgs > I2C_RDWR_IOCTL_MAX_MSGS:
            raise _error(errno.EINVAL, f"I2C_RDWR of {nmsgs} messages (at most {I2C_RDWR_IOCTL_MAX_MSGS})")
        table = copyin(msgs_addr, nmsgs * I2C_MSG.size)
        heads = [I2C_MSG.unpack_from(table, i * I2C_MSG.size) for i in range(nmsgs)]
        # i2c-dev copies the buffers in order and stops at the first one over 8192 bytes,
        # so a bad pointer before it is EFAULT, after it EINVAL.  A NULL buffer of 0 bytes is fine.
        valid = next((i for i, head in enumerate(heads) if head[2] > MAX_MSG_LEN), nmsgs)
        wanted = [(buf, length) for _, _, length, buf in heads[:valid] if length]
        fetched = iter(copyin_many(wanted))
        msgs = []
        for addr, flags, length, _ in heads[:valid]:
            buf = bytearray(next(fetched) if length else b"")
            if flags & I2C_M_RECV_LEN:
                if not flags & I2C_M_RD or length < 1 or buf[0] < 1 or length < buf[0] + I2C_SMBUS_BLOCK_MAX:
                    raise _error(errno.EINVAL, "I2C_M_RECV_LEN needs a read of buf[0] + 32 bytes, buf[0] >= 1")
                buf = bytearray(buf[0])  # the extra bytes; the chip adds its count
            msgs.append(IicMsg(addr, flags, buf))
        if valid < nmsgs:
            raise _error(errno.EINVAL, f"message {valid} is {heads[valid][2]} bytes (at most {MAX_MSG_LEN})")
        result = self.transfer(msgs)
        for (_, _, _, buf_addr), msg in zip(heads, msgs, strict=True):
            if msg.read and msg.buf:  # only after the whole transfer succeeded
                copyout(buf_addr, bytes(msg.buf))
        return result

    def ioctl_smbus(self, client: _Client, arg: int) -> int:
        read_write, command, size, data_addr = SMBUS_DATA.unpack(copyin(arg, SMBUS_DATA.size))
        if not I2C_SMBUS_QUICK <= size <= I2C_SMBUS_I2C_BLOCK_DATA:
            raise _error(errno.EINVAL, f"SMBus size {size} out of range")
        if read_write not in (I2C_SMBUS_READ, I2C_SMBUS_WRITE):
            raise _error(errno.EINVAL, f"SMBus read_write {read_write} out of range")
        if size == I2C_SMBUS_QUICK or (size == I2C_SMBUS_BYTE and read_write == I2C_SMBUS_WRITE):
            # These use no data, and libi2c passes NULL for it: never touch it.
            smbus_xfer(self.transfer, client.addr, client.flags, read_write, command, size, None)
            return 0
        if not data_addr:
            raise _error(errno.EINVAL, "SMBus data is a NULL pointer")
        if size in (I2C_SMBUS_BYTE, I2C_SMBUS_BYTE_DATA):
            datasize = 1
        elif size in (I2C_SMBUS_WORD_DATA, I2C_SMBUS_PROC_CALL):
            datasize = 2
        else:
            datasize = SMBUS_DATA_SIZE
        data = bytearray(SMBUS_DATA_SIZE)
        calls = size in (I2C_SMBUS_PROC_CALL, I2C_SMBUS_BLOCK_PROC_CALL)
        if calls or size == I2C_SMBUS_I2C_BLOCK_DATA or read_write == I2C_SMBUS_WRITE:
            data[:datasize] = copyin(data_addr, datasize)
        if size == I2C_SMBUS_I2C_BLOCK_BROKEN:  # the old I2C block read: always 32 bytes
            size = I2C_SMBUS_I2C_BLOCK_DATA
            if read_write == I2C_SMBUS_READ:
                data[0] = I2C_SMBUS_BLOCK_MAX
        smbus_xfer(self.transfer, client.addr, client.flags, read_write, command, size, data)
        if calls or read_write == I2C_SMBUS_READ:
            copyout(data_addr, bytes(data[:datasize]))
        return 0


_IOCTLS: dict[int, Callable[[I2CBus, _Client, int], int]] = {
    I2C_RETRIES: I2CBus.ioctl_retries,
    I2C_TIMEOUT: I2CBus.ioctl_timeout,
    I2C_SLAVE: I2CBus.ioctl_slave,
    I2C_TENBIT: I2CBus.ioctl_tenbit,
    I2C_FUNCS: I2CBus.ioctl_funcs,
    I2C_SLAVE_FORCE: I2CBus.ioctl_slave_force,
    I2C_RDWR: I2CBus.ioctl_rdwr,
    I2C_PEC: I2CBus.ioctl_pec,
    I2C_SMBUS: I2CBus.ioctl_smbus,
}
