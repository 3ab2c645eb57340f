"""The real clients against a published /dev/i2c-N with examples/i2c_sensors.py on it.

Debian's i2c-tools and PyPI's smbus2, the same checks over every transport
that carries them (FUSE with the caller's memory, CUSE): each function takes
the bus number and, where it drives the chips' state, a `sysctl(name, value)`
that sets a node (value None: reads it) the way the transport's tests reach it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import subprocess
from collections.abc import Callable

AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
I2C_TOOLS = ("i2cdetect", "i2cget", "i2cset", "i2cdump", "i2ctransfer")
Sysctl = Callable[[str, "str | None"], str]

I2C_RDWR, I2C_SMBUS = 0x0707, 0x0720
_libc = ctypes.CDLL(None, use_errno=True)


def have_i2c_tools() -> bool:
    return all(shutil.which(tool) for tool in I2C_TOOLS)


def run(*argv: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(AS_NOBODY if as_nobody else []), *argv], capture_output=True, text=True,
                          timeout=60, check=False)


def ok(*argv: str, as_nobody: bool = False) -> str:
    done = run(*argv, as_nobody=as_nobody)
    assert done.returncode == 0, f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def detected(table: str) -> list[int]:
    """The addresses an i2cdetect table shows as present."""
    found = []
    for line in table.splitlines():
        if re.match(r"^[0-7]0:", line):
            for column in range(16):  # three characters a cell: "48 ", "-- ", "UU ", or blank
                if re.fullmatch(r"[0-9a-f]{2}", line[4 + 3 * column : 6 + 3 * column]):
                    found.append(int(line[:2], 16) + column)
    return found


def dump_row(table: str, row: int) -> list[int]:
    """One row of an i2cdump byte table."""
    line = next(line for line in table.splitlines() if line.startswith(f"{row:02x}: "))
    return [int(cell, 16) for cell in line[4:].split()[:16]]


# -- the checks --------------------------------------------------------------------------------

def check_i2cdetect(bus: int) -> None:
    table = ok("i2cdetect", "-y", str(bus))
    assert detected(table) == [0x48, 0x50], table
    assert "40: -- -- -- -- -- -- -- -- 48 -- -- -- -- -- -- -- " in table.splitlines()
    assert table.splitlines()[6].startswith("50: 50 -- ")
    features = ok("i2cdetect", "-F", str(bus))
    assert re.search(r"^I2C\s+yes$", features, re.M) and re.search(r"^SMBus PEC\s+yes$", features, re.M), features
    assert "no" not in " ".join(line.split()[-1] for line in features.splitlines()[1:])


def check_temperature(bus: int, sysctl: Sysctl) -> None:
    sysctl("dev.tmp102.0.temperature", "-25")
    assert ok("i2cget", "-y", str(bus), "0x48", "0x00", "w").strip() == "0x00e7"
    sysctl("dev.tmp102.0.temperature", "25.0625")
    assert ok("i2cget", "-y", str(bus), "0x48", "0x00", "w").strip() == "0x1019"
    assert float(sysctl("dev.tmp102.0.temperature", None)) == 25.0625
    assert ok("i2cget", "-y", str(bus), "0x48", "0x01", "w").strip() == "0xa060"
    ok("i2cset", "-y", str(bus), "0x48", "0x03", "0x0050", "w")  # T_HIGH 80 C
    assert ok("i2cget", "-y", str(bus), "0x48", "0x03", "w").strip() == "0x0050"


def check_eeprom(bus: int, sysctl: Sysctl) -> None:
    b = str(bus)
    ok("i2ctransfer", "-y", b, "w9@0x50", "0x00", "0x01+")
    assert ok("i2ctransfer", "-y", b, "w1@0x50", "0x00", "r8").split() == [f"0x{i:02x}" for i in range(1, 9)]
    ok("i2ctransfer", "-y", b, "w9@0x50", "0x06", "0xa0+")  # a page write that wraps within its page
    ok("i2cset", "-y", b, "0x50", "0x10", "0xab", "b")
    assert ok("i2cget", "-y", b, "0x50", "0x10", "b").strip() == "0xab"
    assert ok("i2cget", "-y", b, "0x50", "0x00", "i", "4").strip() == "0xa2 0xa3 0xa4 0xa5"
    table = ok("i2cdump", "-y", b, "0x50", "b")
    assert dump_row(table, 0x00)[:8] == [0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA0, 0xA1], table
    assert dump_row(table, 0x10) == [0xAB] + [0xFF] * 15, table
    contents = bytes.fromhex(re.sub(r"[^0-9a-fA-F]", "", sysctl("dev.eeprom.0.contents", None)))
    assert contents[:8] == bytes([0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA0, 0xA1]) and contents[0x10] == 0xAB
    assert len(contents) == 256


def check_smbus2(bus: int) -> None:
    from smbus2 import SMBus, i2c_msg

    with SMBus(bus) as smbus:
        assert smbus.read_word_data(0x48, 1) == 0xA060
        smbus.i2c_rdwr(i2c_msg.write(0x50, [0x40, 0x11, 0x22, 0x33]))
        write, read = i2c_msg.write(0x50, [0x40]), i2c_msg.read(0x50, 3)
        smbus.i2c_rdwr(write, read)
        assert list(read) == [0x11, 0x22, 0x33]
        smbus.write_i2c_block_data(0x50, 0x48, [7, 8, 9])
        assert smbus.read_i2c_block_data(0x50, 0x48, 3) == [7, 8, 9]
        assert smbus.read_byte_data(0x50, 0x41) == 0x22
    table = ok("i2cdump", "-y", str(bus), "0x50", "b")  # what smbus2 wrote, read back by i2c-tools
    assert dump_row(table, 0x40)[:3] == [0x11, 0x22, 0x33] and dump_row(table, 0x40)[8:11] == [7, 8, 9], table


def check_absent_address(bus: int) -> None:
    done = run("i2cget", "-y", str(bus), "0x51", "0x00")
    assert (done.returncode, done.stderr.strip()) == (2, "Error: Read failed"), done


def check_as_nobody(bus: int) -> None:
    assert ok("i2cget", "-y", str(bus), "0x48", "0x01", "w", as_nobody=True).strip() == "0xa060"


def ioctl_errno(fd: int, cmd: int, arg: ctypes.Array[ctypes.c_char] | None) -> int:
    """ioctl(2) with a pointer; the errno it fails with (0 when it succeeds)."""
    result = _libc.ioctl(fd, ctypes.c_ulong(cmd), arg)
    return ctypes.get_errno() if result < 0 else 0


def bad_calls() -> dict[str, Callable[[int], int]]:
    """I2C_RDWR and I2C_SMBUS calls that Linux's i2c-dev refuses; each gives the errno."""

    def rdwr(msgs: list[tuple[int, int, int, int]], count: int | None = None) -> Callable[[int], int]:
        def call(fd: int) -> int:
            keep = [ctypes.create_string_buffer(max(length, 1)) for _, _, length, _ in msgs]
            table = b"".join(addr.to_bytes(2, "little") + flags.to_bytes(2, "little") + length.to_bytes(2, "little")
                             + b"\0\0" + (ctypes.addressof(buf) if ptr else 0).to_bytes(8, "little")
                             for (addr, flags, length, ptr), buf in zip(msgs, keep, strict=True))
            array = ctypes.create_string_buffer(table, len(table))
            args = ctypes.create_string_buffer(ctypes.addressof(array).to_bytes(8, "little")
                                               + (len(msgs) if count is None else count).to_bytes(4, "little")
                                               + b"\0" * 4, 16)
            return ioctl_errno(fd, I2C_RDWR, args)
        return call

    def smbus(read_write: int, size: int, data: bool) -> Callable[[int], int]:
        def call(fd: int) -> int:
            union = ctypes.create_string_buffer(34)
            pointer = ctypes.addressof(union) if data else 0
            args = ctypes.create_string_buffer(bytes([read_write, 0, 0, 0]) + size.to_bytes(4, "little")
                                               + pointer.to_bytes(8, "little"), 16)
            return ioctl_errno(fd, I2C_SMBUS, args)
        return call

    return {
        "I2C_RDWR of 43 messages": rdwr([(0x50, 1, 1, 1)] * 43),
        "I2C_RDWR of 0 messages": rdwr([(0x50, 1, 1, 1)], count=0),
        "I2C_RDWR with a NULL buffer": rdwr([(0x50, 0, 2, 0)]),
        "I2C_RDWR of 8193 bytes": rdwr([(0x50, 1, 8193, 1)]),
        "I2C_RDWR RECV_LEN without room": rdwr([(0x50, 0x401, 8, 1)]),
        "I2C_SMBUS size 9": smbus(1, 9, True),
        "I2C_SMBUS read_write 2": smbus(2, 2, True),
        "I2C_SMBUS byte data to NULL": smbus(1, 2, False),
    }


EXPECTED_ERRNOS = {
    "I2C_RDWR of 43 messages": errno.EINVAL,
    "I2C_RDWR of 0 messages": errno.EINVAL,
    "I2C_RDWR with a NULL buffer": errno.EFAULT,
    "I2C_RDWR of 8193 bytes": errno.EINVAL,
    "I2C_RDWR RECV_LEN without room": errno.EINVAL,
    "I2C_SMBUS size 9": errno.EINVAL,
    "I2C_SMBUS read_write 2": errno.EINVAL,
    "I2C_SMBUS byte data to NULL": errno.EINVAL,
}


def errnos_of_bad_calls(bus: int) -> dict[str, int]:
    fd = os.open(f"/dev/i2c-{bus}", os.O_RDWR)
    try:
        return {name: call(fd) for name, call in bad_calls().items()}
    finally:
        os.close(fd)


def check_bad_input(bus: int) -> None:
    """Linux's errnos for bad I2C_RDWR and I2C_SMBUS calls, and the bus goes on serving."""
    assert errnos_of_bad_calls(bus) == EXPECTED_ERRNOS
    assert ok("i2cget", "-y", str(bus), "0x48", "0x01", "w").strip() == "0xa060"


class I2CSensorsSuite:
    """The checks as tests, for each transport: a subclass named Test... in the transport's
    test file, where a fixture `i2c` gives (bus number, sysctl)."""

    def test_i2cdetect_lists_exactly_48_and_50(self, i2c: tuple[int, Sysctl]) -> None:
        check_i2cdetect(i2c[0])

    def test_i2cget_reads_the_temperature_sysctl_set(self, i2c: tuple[int, Sysctl]) -> None:
        check_temperature(*i2c)

    def test_eeprom_through_i2cset_i2ctransfer_and_i2cdump(self, i2c: tuple[int, Sysctl]) -> None:
        check_eeprom(*i2c)

    def test_smbus2_and_i2c_rdwr(self, i2c: tuple[int, Sysctl]) -> None:
        check_smbus2(i2c[0])

    def test_an_absent_chip_is_read_failed(self, i2c: tuple[int, Sysctl]) -> None:
        check_absent_address(i2c[0])

    def test_nobody_drives_the_0666_bus(self, i2c: tuple[int, Sysctl]) -> None:
        check_as_nobody(i2c[0])

    def test_bad_input_gets_linux_errnos_and_the_bus_keeps_serving(self, i2c: tuple[int, Sysctl]) -> None:
        check_bad_input(i2c[0])
