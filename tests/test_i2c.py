"""The I2C bus and examples/i2c_sensors.py in process: i2c-dev's ABI as libi2c and i2c-tools use it.

Each test drives /dev/i2c-1 through the structures a real client passes
(tests/i2c_client.py), in a SimMemory that stands for its address space.
"""

from __future__ import annotations

import errno
import os
import textwrap
from collections.abc import Callable, Iterator

import pytest
from i2c_client import (
    BYTE_DATA,
    I2C_BLOCK,
    I2C_PEC,
    I2C_RETRIES,
    I2C_TENBIT,
    I2C_TIMEOUT,
    M_RD,
    M_RECV_LEN,
    M_TEN,
    MSG,
    READ,
    WRITE,
    Client,
    i2cdetect,
)

from pykld import Kernel
from pykld.bus import smbus_pec

DEV = "/dev/i2c-1"
TMP, EEPROM = 0x48, 0x50


@pytest.fixture
def sensors(kernel: Kernel, example: Callable[[str], str]) -> Kernel:
    kernel.kldload(example("i2c_sensors"))
    return kernel


@pytest.fixture
def bus(sensors: Kernel) -> Iterator[Client]:
    f = sensors.open(DEV, os.O_RDWR)
    yield Client(f)
    f.close()


def errno_of(call: Callable[[], object]) -> int | None:
    with pytest.raises(OSError) as excinfo:
        call()
    return excinfo.value.errno


def tmp102(sensors: Kernel) -> object:
    return sensors_module(sensors).bus.chips[TMP, False]


def sensors_module(kernel: Kernel):  # type: ignore[no-untyped-def]
    return kernel.module("i2c_sensors").instance


# -- what i2c-tools sees first ---------------------------------------------------------------

def test_funcs_are_i2c_10bit_and_every_smbus_transaction_with_pec(bus: Client) -> None:
    assert bus.funcs() == 0x0FFF800B


def test_i2cdetect_finds_exactly_the_two_chips(bus: Client) -> None:
    assert i2cdetect(bus) == [TMP, EEPROM]
    assert i2cdetect(bus, 0x00, 0x7F) == [TMP, EEPROM]


def test_an_empty_address_is_a_nak_enxio(bus: Client) -> None:
    bus.slave(0x51)
    assert errno_of(lambda: bus.read_byte_data(0)) == errno.ENXIO
    assert errno_of(lambda: bus.f.read(1)) == errno.ENXIO
    assert errno_of(lambda: bus.f.write(b"\0")) == errno.ENXIO
    assert errno_of(lambda: bus.write_quick(WRITE)) == errno.ENXIO


def test_unknown_ioctl_is_enotty(bus: Client) -> None:
    assert errno_of(lambda: bus.ioctl(0x0709, 0)) == errno.ENOTTY


# -- I2C_SLAVE and the per-open settings -------------------------------------------------------

def test_slave_address_range_follows_tenbit(bus: Client) -> None:
    assert errno_of(lambda: bus.slave(0x80)) == errno.EINVAL
    bus.ioctl(I2C_TENBIT, 1)
    bus.slave(0x3FF)
    assert errno_of(lambda: bus.slave(0x400)) == errno.EINVAL
    assert errno_of(lambda: bus.slave(0x400, force=True)) == errno.EINVAL


def test_each_open_has_its_own_address(sensors: Kernel) -> None:
    with sensors.open(DEV, os.O_RDWR) as f, sensors.open(DEV, os.O_RDWR) as g:
        a, b = Client(f), Client(g)
        a.slave(TMP)
        b.slave(EEPROM)
        assert a.read_word_data(1) == 0xA060
        assert b.read_byte_data(0) == 0xFF


def test_a_busy_address_is_ebusy_unless_forced(kernel: Kernel, load_driver: Callable[..., int]) -> None:
    load_driver("""
        from pykld import Module, make_dev
        from pykld.bus import I2CBus, I2CPeripheral
        class Busy(Module):
            name = "busy"
            def load(self):
                bus = I2CBus(busy=(0x20,))
                bus.attach(0x20, I2CPeripheral())
                make_dev(bus, "i2c-7")
    """)
    with kernel.open("/dev/i2c-7", os.O_RDWR) as f:
        client = Client(f)
        assert errno_of(lambda: client.slave(0x20)) == errno.EBUSY
        client.slave(0x20, force=True)
        assert client.read_byte() == 0xFF


def test_retries_and_timeout_take_an_int(bus: Client) -> None:
    assert bus.ioctl(I2C_RETRIES, 3) == 0
    assert bus.ioctl(I2C_TIMEOUT, 100) == 0
    assert errno_of(lambda: bus.ioctl(I2C_RETRIES, 1 << 31)) == errno.EINVAL
    assert errno_of(lambda: bus.ioctl(I2C_TIMEOUT, 1 << 31)) == errno.EINVAL
    i2c = sensors_module(bus.f.file.kernel).bus
    assert (i2c.retries, i2c.timeout_ms) == (3, 1000)


# -- the TMP102 as the datasheet has it (hardware.md §6.1) ---------------------------------------

@pytest.mark.parametrize(("celsius", "word"), [(25.0, 0x0019), (25.0625, 0x1019), (-25.0, 0x00E7),
                                               (127.9375, 0xF07F), (0.0, 0x0000), (-0.0625, 0xF0FF)])
def test_tmp102_temperature_word_is_byte_swapped_12_bits(sensors: Kernel, bus: Client, celsius: float,
                                                        word: int) -> None:
    tmp102(sensors).set_celsius(celsius)  # type: ignore[attr-defined]
    bus.slave(TMP)
    assert bus.read_word_data(0) == word


def test_tmp102_registers_and_their_defaults(bus: Client) -> None:
    bus.slave(TMP)
    assert [bus.read_word_data(reg) for reg in range(4)] == [0x0019, 0xA060, 0x004B, 0x0050]
    bus.write_word_data(3, 0x0055)  # i2cset -y 1 0x48 0x03 0x0055 w: T_HIGH 85 C
    assert bus.read_word_data(3) == 0x0055
    bus.write_word_data(0, 0x0000)  # the temperature is read-only
    assert bus.read_word_data(0) == 0x0019
    bus.write_word_data(1, 0x0000)  # R1 R0 and AL stay set
    assert bus.read_word_data(1) == 0x2060


def test_tmp102_pointer_persists_for_plain_reads(bus: Client) -> None:
    bus.slave(TMP)
    bus.f.write(b"\x01")  # pointer to config
    assert bus.f.read(2) == b"\x60\xa0"
    assert bus.f.read(2) == b"\x60\xa0"  # no auto-increment
    assert bus.f.read(1) == b"\x60"
    assert bus.f.read(2) == b"\x60\xa0"  # a new transaction starts with the MSB
    assert bus.read_byte_data(0) == 0x19  # i2cget b: the MSB


def test_tmp102_extended_mode_is_13_bits(sensors: Kernel, bus: Client) -> None:
    bus.slave(TMP)
    bus.write_word_data(1, 0xB060)  # EM set in the second byte
    tmp102(sensors).set_celsius(100.0)  # type: ignore[attr-defined]
    assert bus.read_word_data(0) == 0x0132  # 100 C: 1600 << 3 | 1 = 0x3201, byte-swapped


def test_tmp102_refuses_a_temperature_it_cannot_hold(sensors: Kernel) -> None:
    assert errno_of(lambda: tmp102(sensors).set_celsius(130.0)) == errno.EINVAL  # type: ignore[attr-defined]


# -- the 24C02 EEPROM (hardware.md §6.2) ----------------------------------------------------

def test_eeprom_is_blank(bus: Client) -> None:
    bus.slave(EEPROM)
    assert bus.read_i2c_block_data(0, 32) == b"\xff" * 32


def test_eeprom_page_write_and_random_read(bus: Client) -> None:
    bus.rdwr((EEPROM, 0, bytes(range(0, 9))))  # i2ctransfer w9@0x50 0x00 0x01+
    assert bus.rdwr((EEPROM, 0, b"\0"), (EEPROM, M_RD, 8))[1] == bytes(range(1, 9))


def test_eeprom_page_write_wraps_within_its_page(bus: Client) -> None:
    bus.rdwr((EEPROM, 0, bytes([6, *range(0xA0, 0xA8)])))  # i2ctransfer w9@0x50 0x06 0xa0+
    data = bus.rdwr((EEPROM, 0, b"\0"), (EEPROM, M_RD, 8))[1]
    assert data == bytes([0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA0, 0xA1])


def test_eeprom_byte_write_then_current_address_and_sequential_reads(bus: Client) -> None:
    bus.slave(EEPROM)
    bus.write_byte_data(0x10, 0xAB)  # i2cset -y 1 0x50 0x10 0xab b
    assert bus.read_byte_data(0x10) == 0xAB
    bus.write_byte_data(0xFF, 0x01)
    bus.write_byte_data(0x00, 0x02)
    bus.write_byte(0xFF)  # pointer to 0xFF, then plain reads go on from it
    assert bus.f.read(2) == b"\x01\x02"  # rolled over 0xFF -> 0x00
    assert bus.read_byte() == 0xFF  # the current address: 0x01


def test_eeprom_i2c_block_write_and_read(bus: Client) -> None:
    bus.slave(EEPROM)
    bus.write_i2c_block_data(0x20, b"\xa2\xa3\xa4\xa5")
    assert bus.read_i2c_block_data(0x20, 4) == b"\xa2\xa3\xa4\xa5"  # i2cget -y 1 0x50 0x20 i 4


# -- I2C_RDWR: Linux's limits and errnos -----------------------------------------------------

def test_rdwr_of_42_messages_works_43_is_einval(bus: Client) -> None:
    assert len(bus.rdwr(*[(EEPROM, M_RD, 1)] * 42)) == 42
    buf = bus.mem.alloc(1)
    table = MSG.pack(EEPROM, M_RD, 1, buf) * 43
    assert errno_of(lambda: bus.rdwr_raw(table, 43)) == errno.EINVAL


def test_rdwr_without_messages_is_einval(bus: Client) -> None:
    assert errno_of(lambda: bus.rdwr_raw(b"", 1)) == errno.EINVAL  # msgs NULL
    assert errno_of(lambda: bus.rdwr_raw(MSG.pack(EEPROM, 0, 0, 0), 0)) == errno.EINVAL


def test_rdwr_longer_than_8192_is_einval_8192_works(bus: Client) -> None:
    assert len(bus.rdwr((EEPROM, M_RD, 8192))[0]) == 8192
    table = MSG.pack(EEPROM, M_RD, 8193, bus.mem.alloc(8193))
    assert errno_of(lambda: bus.rdwr_raw(table, 1)) == errno.EINVAL


def test_rdwr_null_buffer_is_efault_unless_empty(bus: Client) -> None:
    assert errno_of(lambda: bus.rdwr_raw(MSG.pack(EEPROM, 0, 2, 0), 1)) == errno.EFAULT
    assert bus.rdwr_raw(MSG.pack(EEPROM, 0, 0, 0), 1) == 1  # a quick write through I2C_RDWR
    assert errno_of(lambda: bus.rdwr_raw(MSG.pack(EEPROM, 0, 4, 0xDEAD0000), 1)) == errno.EFAULT


def test_rdwr_checks_in_i2c_dev_order(bus: Client) -> None:
    """A bad pointer before a message that is too long is EFAULT; after it, EINVAL."""
    good = bus.mem.alloc(1)
    assert errno_of(lambda: bus.rdwr_raw(MSG.pack(EEPROM, 0, 1, 0) + MSG.pack(EEPROM, 0, 9000, good), 2)) \
        == errno.EFAULT
    assert errno_of(lambda: bus.rdwr_raw(MSG.pack(EEPROM, 0, 9000, good) + MSG.pack(EEPROM, 0, 1, 0), 2)) \
        == errno.EINVAL


def test_rdwr_nak_stops_the_transfer_and_copies_nothing_out(sensors: Kernel, bus: Client) -> None:
    read_buf = bus.mem.alloc(b"\x55" * 4)
    table = MSG.pack(EEPROM, 0, 2, bus.mem.alloc(b"\x30\x77")) + MSG.pack(EEPROM, M_RD, 4, read_buf) \
        + MSG.pack(0x51, 0, 1, bus.mem.alloc(b"\0"))
    assert errno_of(lambda: bus.rdwr_raw(table, 3)) == errno.ENXIO
    assert bus.mem.read(read_buf, 4) == b"\x55" * 4  # not copied out
    bus.slave(EEPROM)
    assert bus.read_byte_data(0x30) == 0x77  # the messages before the NAK happened


def test_rdwr_recv_len_needs_room_for_32_more(bus: Client) -> None:
    table = MSG.pack(EEPROM, M_RD | M_RECV_LEN, 32, bus.mem.alloc(b"\x01" + bytes(31)))
    assert errno_of(lambda: bus.rdwr_raw(table, 1)) == errno.EINVAL
    table = MSG.pack(EEPROM, M_RECV_LEN, 33, bus.mem.alloc(b"\x01" + bytes(32)))  # not a read
    assert errno_of(lambda: bus.rdwr_raw(table, 1)) == errno.EINVAL


def test_ten_bit_messages_reach_a_ten_bit_chip(kernel: Kernel, load_driver: Callable[..., int]) -> None:
    load_driver(CHIPS)
    with kernel.open("/dev/i2c-9", os.O_RDWR) as f:
        client = Client(f)
        assert client.rdwr((0x150, M_TEN | M_RD, 2))[0] == b"\x01\x50"
        assert errno_of(lambda: client.rdwr((0x150, M_RD, 2))) == errno.ENXIO  # 7-bit 0x50: nobody
        client.ioctl(I2C_TENBIT, 1)
        client.slave(0x150)
        assert f.read(2) == b"\x01\x50"


# -- I2C_SMBUS: every transaction, Linux's checks -----------------------------------------------

CHIPS = textwrap.dedent("""
    import errno
    from pykld import Module, make_dev
    from pykld.bus import I2CBus, I2CPeripheral, smbus_pec

    class Echo(I2CPeripheral):
        '''Records what it gets; answers from `reply`; a PEC chip when `pec`.'''
        def __init__(self, reply=b"", pec=False):
            self.seen, self.reply, self.pec = [], bytearray(reply), pec
        def transfer(self, msgs):
            self.seen.append([(m.flags, bytes(m.buf)) for m in msgs])
            for m in msgs:
                if m.read:
                    n = len(m.buf) + (self.reply[0] if m.recv_len else 0)
                    m.buf[:] = (self.reply * 40)[:n]
                    if self.pec:
                        m.buf[-1] = smbus_pec(bytes([msgs[0].addr << 1]) + bytes(msgs[0].buf)
                                              + bytes([msgs[0].addr << 1 | 1]) + bytes(m.buf[:-1]))

    class TenBit(I2CPeripheral):
        def read(self, n):
            return b"\\x01\\x50"[:n]

    class Crash(I2CPeripheral):
        def transfer(self, msgs):
            raise RuntimeError("a driver bug")

    class Chips(Module):
        name = "chips"
        def load(self):
            self.bus = bus = I2CBus()
            bus.attach(0x10, Echo(b"\\x03\\x0a\\x0b\\x0c"))
            bus.attach(0x11, Echo(b"\\x00"))
            bus.attach(0x12, Echo(b"\\x21"))
            bus.attach(0x13, Echo(b"\\x02\\x55\\x66", pec=True))
            bus.attach(0x150, TenBit(), ten_bit=True)
            bus.attach(0x14, Crash())
            make_dev(bus, "i2c-9")
""")


@pytest.fixture
def chips(kernel: Kernel, load_driver: Callable[..., int]) -> Iterator[tuple[Client, dict[int, object]]]:
    load_driver(CHIPS, "chips")
    with kernel.open("/dev/i2c-9", os.O_RDWR) as f:
        yield Client(f), {addr: chip for (addr, _), chip in
                          kernel.module("chips").instance.bus.chips.items()}


def seen(chips: dict[int, object], addr: int) -> list[list[tuple[int, bytes]]]:
    return chips[addr].seen  # type: ignore[attr-defined, no-any-return]


def test_smbus_transactions_become_the_messages_linux_makes(chips: tuple[Client, dict[int, object]]) -> None:
    client, chip = chips
    client.slave(0x10)
    client.write_quick(READ)
    client.write_quick(WRITE)
    assert client.read_byte() == 0x03
    client.write_byte(0x42)
    assert client.read_byte_data(0x01) == 0x03
    client.write_byte_data(0x02, 0x99)
    assert client.read_word_data(0x03) == 0x0A03
    client.write_word_data(0x04, 0x1234)
    assert client.process_call(0x05, 0xBEEF) == 0x0A03
    assert client.read_block_data(0x06) == b"\x0a\x0b\x0c"
    client.write_block_data(0x07, b"\x01\x02")
    assert client.block_process_call(0x08, b"\x09") == b"\x0a\x0b\x0c"
    assert client.read_i2c_block_data(0x09, 3) == b"\x03\x0a\x0b"
    client.write_i2c_block_data(0x0A, b"\x01\x02")
    rd = M_RD
    assert seen(chip, 0x10) == [
        [(rd, b"")], [(0, b"")],
        [(rd, b"\x00")], [(0, b"\x42")],
        [(0, b"\x01"), (rd, b"\x00")], [(0, b"\x02\x99")],
        [(0, b"\x03"), (rd, b"\x00\x00")], [(0, b"\x04\x34\x12")],
        [(0, b"\x05\xef\xbe"), (rd, b"\x00\x00")],
        [(0, b"\x06"), (rd | M_RECV_LEN, b"\x00")], [(0, b"\x07\x02\x01\x02")],
        [(0, b"\x08\x01\x09"), (rd | M_RECV_LEN, b"\x00")],
        [(0, b"\x09"), (rd, b"\x00\x00\x00")], [(0, b"\x0a\x01\x02")],
    ]


def test_the_broken_i2c_block_read_reads_32(chips: tuple[Client, dict[int, object]]) -> None:
    client, chip = chips
    client.slave(0x10)
    assert len(client.read_i2c_block_data(0, 32)) == 32
    assert len(seen(chip, 0x10)[-1][1][1]) == 32


def test_smbus_bad_arguments_are_einval(chips: tuple[Client, dict[int, object]]) -> None:
    client, chip = chips
    client.slave(0x10)
    assert errno_of(lambda: client.smbus(READ, 0, 9)) == errno.EINVAL
    assert errno_of(lambda: client.smbus(2, 0, BYTE_DATA)) == errno.EINVAL
    assert errno_of(lambda: client.smbus(READ, 0, BYTE_DATA, data_addr=0)) == errno.EINVAL
    assert errno_of(lambda: client.write_block_data(0, bytes(33))) == errno.EINVAL
    assert errno_of(lambda: client.smbus(READ, 0, I2C_BLOCK, b"\x21")) == errno.EINVAL
    assert seen(chip, 0x10) == []  # none of it reached the chip
    assert errno_of(lambda: client.smbus(READ, 0, BYTE_DATA, data_addr=0xDEAD0000)) == errno.EFAULT


def test_block_read_lengths_out_of_range_are_eproto(chips: tuple[Client, dict[int, object]]) -> None:
    client, _ = chips
    for addr in (0x11, 0x12):  # the chip sends 0, then 33
        client.slave(addr)
        assert errno_of(lambda: client.read_block_data(0)) == errno.EPROTO
        table = MSG.pack(addr, M_RD | M_RECV_LEN, 41, client.mem.alloc(b"\x01" + bytes(40)))
        assert errno_of(lambda: client.rdwr_raw(table, 1)) == errno.EPROTO  # noqa: B023 - called at once


def test_rdwr_recv_len_reads_the_count_the_chip_sends(chips: tuple[Client, dict[int, object]]) -> None:
    client, _ = chips
    buf = client.mem.alloc(b"\x01" + bytes(32))
    assert client.rdwr_raw(MSG.pack(0x10, M_RD | M_RECV_LEN, 33, buf), 1) == 1
    assert client.mem.read(buf, 5) == b"\x03\x0a\x0b\x0c\x00"


def test_pec_is_sent_and_checked(chips: tuple[Client, dict[int, object]]) -> None:
    client, chip = chips
    client.ioctl(I2C_PEC, 1)
    client.slave(0x13)
    assert client.read_byte_data(0x07) == 0x02  # the PEC chip's byte passes the check
    client.write_byte_data(0x01, 0x99)
    assert seen(chip, 0x13)[-1] == [(0x04, bytes([0x01, 0x99, smbus_pec(bytes([0x26, 0x01, 0x99]))]))]
    client.slave(0x10)  # a chip without PEC: its next byte is no PEC
    assert errno_of(lambda: client.read_byte_data(0)) == errno.EBADMSG
    client.ioctl(I2C_PEC, 0)
    assert client.read_byte_data(0) == 0x03


def test_smbus_pec_is_crc8_poly_7() -> None:
    assert smbus_pec(b"123456789") == 0xF4  # the CRC-8 check value


def test_eeprom_fails_pec_reads_like_a_chip_without_pec(bus: Client) -> None:
    bus.ioctl(I2C_PEC, 1)
    bus.slave(EEPROM)
    assert errno_of(lambda: bus.read_byte_data(0)) == errno.EBADMSG


def test_a_chip_that_raises_costs_its_caller_eio_and_the_bus_goes_on(chips: tuple[Client, dict[int, object]],
                                                                      kernel: Kernel) -> None:
    client, _ = chips
    client.slave(0x14)
    assert errno_of(lambda: client.read_byte()) == errno.EIO
    assert any("a driver bug" in line for line in kernel.dmesg())
    client.slave(0x10)
    assert client.read_byte() == 0x03


# -- read() and write() ------------------------------------------------------------------------

def test_read_and_write_are_clamped_to_8192(bus: Client) -> None:
    bus.slave(EEPROM)
    assert len(bus.f.read(10000)) == 8192
    assert bus.f.write(bytes(9000)) == 8192
    assert bus.f.read(0) == b""


# -- sysctl: the chips' state from outside -------------------------------------------------------

def test_temperature_sysctl_drives_the_register(sensors: Kernel, bus: Client) -> None:
    bus.slave(TMP)
    assert sensors.sysctl("dev.tmp102.0.temperature") == 25.0
    sensors.sysctl("dev.tmp102.0.temperature", "-25")
    assert bus.read_word_data(0) == 0x00E7
    assert errno_of(lambda: sensors.sysctl("dev.tmp102.0.temperature", 200.0)) == errno.EINVAL
    assert sensors.sysctl("dev.tmp102.0.temperature") == -25.0


def test_eeprom_contents_sysctl_reads_and_writes_the_memory(sensors: Kernel, bus: Client) -> None:
    bus.slave(EEPROM)
    bus.write_byte_data(0x03, 0x5A)
    assert sensors.sysctl("dev.eeprom.0.contents") == b"\xff" * 3 + b"\x5a" + b"\xff" * 252
    sensors.sysctl("dev.eeprom.0.contents", bytes(range(256)).hex())
    assert bus.read_i2c_block_data(0xF0, 16) == bytes(range(0xF0, 0x100))
    assert errno_of(lambda: sensors.sysctl("dev.eeprom.0.contents", "00")) == errno.EINVAL


def test_counters_count_transactions_and_bytes(sensors: Kernel, bus: Client) -> None:
    bus.slave(TMP)
    bus.read_word_data(0)  # [W 0x00][R 2]
    bus.write_word_data(2, 0x0050)  # [W 0x02 0x50 0x00]
    values = {oid.name.rsplit(".", 1)[1]: oid.value() for oid in sensors.sysctl_list("dev.tmp102.0")}
    assert values == {"desc": "TI TMP102 temperature sensor", "location": "addr=0x48", "transfers": 2,
                      "messages": 3, "bytes_read": 2, "bytes_written": 4, "temperature": 25.0}
    assert errno_of(lambda: sensors.sysctl("dev.tmp102.0.transfers", 0)) == errno.EPERM


def test_a_second_chip_of_a_kind_is_the_next_unit_and_unload_frees_the_names(
        kernel: Kernel, load_driver: Callable[..., int]) -> None:
    load_driver("""
        from pykld import Module, make_dev
        from pykld.bus import I2CBus
        from i2c_sensors import TMP102
        class Two(Module):
            name = "two"
            def load(self):
                bus = I2CBus()
                bus.attach(0x48, TMP102(20.0))
                bus.attach(0x49, TMP102(30.0))
                make_dev(bus, "i2c-8")
    """, "two")
    assert [kernel.sysctl(f"dev.tmp102.{unit}.location") for unit in (0, 1)] == ["addr=0x48", "addr=0x49"]
    assert kernel.sysctl("dev.tmp102.1.temperature") == 30.0
    kernel.kldunload("two")
    assert errno_of(lambda: kernel.sysctl_list("dev.tmp102")) == errno.ENOENT


def test_rdwr_fetches_every_buffer_in_one_round(bus: Client) -> None:
    """copyin_many: the argument, the message table, then all the buffers at once."""
    reads: list[int] = []
    real = bus.mem.read_many

    def counting(iovecs: list[tuple[int, int]]) -> list[bytes]:
        reads.append(len(iovecs))
        return real(iovecs)

    bus.mem.read_many = counting  # type: ignore[method-assign]
    bus.rdwr(*[(EEPROM, 0, b"\x00\x01")] * 5, (EEPROM, M_RD, 4))
    assert reads == [6]  # the six buffers in one call (the two structures come by copyin)
