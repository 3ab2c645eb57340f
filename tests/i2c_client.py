"""libi2c and i2c-tools' calls, in process: the structures they pass, built in a SimMemory.

Each function issues the ioctls the real client issues (hardware.md §2.5), so
the unit tests exercise the driver through the same ABI as i2cget and smbus2.
"""

from __future__ import annotations

import struct

from pykld.kernel.fd import SimFile, SimMemory

I2C_SLAVE, I2C_TENBIT, I2C_FUNCS, I2C_SLAVE_FORCE = 0x0703, 0x0704, 0x0705, 0x0706
I2C_RETRIES, I2C_TIMEOUT, I2C_RDWR, I2C_PEC, I2C_SMBUS = 0x0701, 0x0702, 0x0707, 0x0708, 0x0720
READ, WRITE = 1, 0
QUICK, BYTE, BYTE_DATA, WORD_DATA, PROC_CALL, BLOCK_DATA, BROKEN, BLOCK_PROC_CALL, I2C_BLOCK = range(9)
M_RD, M_TEN, M_RECV_LEN = 0x0001, 0x0010, 0x0400
SMBUS_ARGS = struct.Struct("=BBxxIQ")
RDWR_ARGS = struct.Struct("=QI4x")
MSG = struct.Struct("=HHH2xQ")


class Client:
    """One open of /dev/i2c-N with libi2c's functions."""

    def __init__(self, f: SimFile) -> None:
        self.f = f
        self.mem = SimMemory()

    def ioctl(self, cmd: int, arg: int) -> int:
        return self.f.ioctl(cmd, arg, memory=self.mem).result

    def funcs(self) -> int:
        out = self.mem.alloc(8)
        self.ioctl(I2C_FUNCS, out)
        return int.from_bytes(self.mem.read(out, 8), "little")

    def slave(self, addr: int, force: bool = False) -> None:
        self.ioctl(I2C_SLAVE_FORCE if force else I2C_SLAVE, addr)

    def smbus(self, read_write: int, command: int, size: int, data: bytes | None = None,
              data_addr: int | None = None) -> bytes:
        """i2c_smbus_access(); returns the union i2c_smbus_data afterwards (34 bytes)."""
        if data_addr is None:
            data_addr = self.mem.alloc((data or b"").ljust(34, b"\0"))
        self.ioctl(I2C_SMBUS, self.mem.alloc(SMBUS_ARGS.pack(read_write, command, size, data_addr)))
        return self.mem.read(data_addr, 34) if data_addr else b""

    def write_quick(self, value: int) -> None:
        self.smbus(value, 0, QUICK, data_addr=0)

    def read_byte(self) -> int:
        return self.smbus(READ, 0, BYTE)[0]

    def write_byte(self, value: int) -> None:
        self.smbus(WRITE, value, BYTE, data_addr=0)

    def read_byte_data(self, reg: int) -> int:
        return self.smbus(READ, reg, BYTE_DATA)[0]

    def write_byte_data(self, reg: int, value: int) -> None:
        self.smbus(WRITE, reg, BYTE_DATA, bytes([value]))

    def read_word_data(self, reg: int) -> int:
        return int.from_bytes(self.smbus(READ, reg, WORD_DATA)[:2], "little")

    def write_word_data(self, reg: int, value: int) -> None:
        self.smbus(WRITE, reg, WORD_DATA, value.to_bytes(2, "little"))

    def process_call(self, reg: int, value: int) -> int:
        return int.from_bytes(self.smbus(WRITE, reg, PROC_CALL, value.to_bytes(2, "little"))[:2], "little")

    def read_block_data(self, reg: int) -> bytes:
        block = self.smbus(READ, reg, BLOCK_DATA)
        return block[1 : 1 + block[0]]

    def write_block_data(self, reg: int, values: bytes) -> None:
        self.smbus(WRITE, reg, BLOCK_DATA, bytes([len(values)]) + values)

    def block_process_call(self, reg: int, values: bytes) -> bytes:
        block = self.smbus(WRITE, reg, BLOCK_PROC_CALL, bytes([len(values)]) + values)
        return block[1 : 1 + block[0]]

    def read_i2c_block_data(self, reg: int, length: int) -> bytes:
        size = BROKEN if length == 32 else I2C_BLOCK  # as libi2c does
        return self.smbus(READ, reg, size, bytes([length]))[1 : 1 + length]

    def write_i2c_block_data(self, reg: int, values: bytes) -> None:
        self.smbus(WRITE, reg, I2C_BLOCK, bytes([len(values)]) + values)

    def rdwr(self, *msgs: tuple[int, int, bytes | int]) -> list[bytes]:
        """I2C_RDWR of (addr, flags, data or read length); returns each buffer afterwards."""
        bufs = [self.mem.alloc(data) if (data if isinstance(data, int) else len(data)) else 0
                for _, _, data in msgs]
        table = b"".join(MSG.pack(addr, flags, data if isinstance(data, int) else len(data), buf)
                         for (addr, flags, data), buf in zip(msgs, bufs, strict=True))
        count = self.ioctl(I2C_RDWR, self.mem.alloc(RDWR_ARGS.pack(self.mem.alloc(table), len(msgs))))
        assert count == len(msgs)
        return [self.mem.read(buf, data if isinstance(data, int) else len(data)) if buf else b""
                for (_, _, data), buf in zip(msgs, bufs, strict=True)]

    def rdwr_raw(self, table: bytes, nmsgs: int) -> int:
        """I2C_RDWR of a hand-made message table (for bad input)."""
        msgs_addr = self.mem.alloc(table) if table else 0
        return self.ioctl(I2C_RDWR, self.mem.alloc(RDWR_ARGS.pack(msgs_addr, nmsgs)))


def i2cdetect(client: Client, first: int = 0x08, last: int = 0x77) -> list[int]:
    """The addresses i2cdetect -y shows: read byte for 0x30-0x37 and 0x50-0x5f, quick write elsewhere."""
    found = []
    for addr in range(first, last + 1):
        try:
            client.slave(addr)
            if 0x30 <= addr <= 0x37 or 0x50 <= addr <= 0x5F:
                client.read_byte()
            else:
                client.write_quick(WRITE)
        except OSError:
            continue
        found.append(addr)
    return found
