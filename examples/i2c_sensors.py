"""i2c_sensors: an I2C bus, /dev/i2c-1, with a TMP102 temperature sensor at 0x48 and a 24C02 EEPROM at 0x50.

Real clients drive it as they drive hardware (i2c-tools, smbus2; over FUSE the
daemon must be root, see the README):

    i2cdetect -y 1                      # 48 and 50
    i2cget -y 1 0x48 0x00 w             # 0x0019: 25.0 C, byte-swapped as SMBus words are
    pykld sysctl dev.tmp102.0.temperature=-25 && i2cget -y 1 0x48 0x00 w    # 0x00e7
    i2cset -y 1 0x50 0x10 0xab b; i2cdump -y 1 0x50 b
    pykld sysctl dev.eeprom.0.contents

PYKLD_I2C_SENSORS_BUS picks another bus number.  Register maps: hardware.md §6.1, §6.2.
"""

import errno
import os

from pykld import Module, make_dev
from pykld.bus import I2CBus, RegisterMap, SysctlNode


class TMP102(RegisterMap):
    """TI TMP102: pointer P1P0 selects temperature (read-only), configuration, T_LOW, T_HIGH."""

    name, description = "tmp102", "TI TMP102 temperature sensor"
    size, width, auto_increment = 4, 2, False

    def __init__(self, celsius: float = 25.0) -> None:
        self.registers = [0, 0x60A0, 0x4B00, 0x5000]  # config: 4 Hz, AL high; T_LOW 75 C, T_HIGH 80 C
        self.set_celsius(celsius)

    def get(self, reg: int) -> int:
        if reg != 0:
            return self.registers[reg]
        if self.registers[1] & 0x0010:  # EM: 13 bits, bit 0 says so
            return (round(self.celsius / 0.0625) & 0x1FFF) << 3 | 1
        return (round(self.celsius / 0.0625) & 0xFFF) << 4

    def set(self, reg: int, value: int) -> None:
        if reg == 1:  # R1 R0 and AL read as 1; OS (one-shot) reads 0 while converting continuously
            self.registers[1] = 0x6020 | (value & 0x1FD0)
        elif reg > 1:
            self.registers[reg] = value & 0xFFF0

    def set_celsius(self, celsius: float) -> None:
        if not -128 <= celsius < 128:  # what 12 bits of 0.0625 C hold
            raise OSError(errno.EINVAL, f"{celsius} C is outside -128..127.9375")
        self.celsius = celsius

    def sysctl_nodes(self) -> list[SysctlNode]:
        return [("temperature", "float", lambda: self.celsius, self.set_celsius, "the reading, degrees C")]


class EEPROM24C02(RegisterMap):
    """A 24C02: 256 bytes, blank 0xFF; page writes wrap within their page, reads roll over at the end."""

    name, description = "eeprom", "24C02 EEPROM, 256 x 8"

    def __init__(self, page: int = 8) -> None:  # AT24C02 and 24LC02B: 8; ST M24C02: 16
        self.page = page
        self.memory = bytearray(b"\xff" * 256)

    def get(self, reg: int) -> int:
        return self.memory[reg]

    def set(self, reg: int, value: int) -> None:
        self.memory[reg] = value

    def next_pointer(self, reg: int, writing: bool) -> int:
        if writing:  # the low address bits count within the page
            return reg - reg % self.page + (reg + 1) % self.page
        return (reg + 1) % 256

    def set_contents(self, data: bytes) -> None:
        if len(data) != len(self.memory):
            raise OSError(errno.EINVAL, f"the EEPROM holds {len(self.memory)} bytes, not {len(data)}")
        self.memory[:] = data

    def sysctl_nodes(self) -> list[SysctlNode]:
        return [("contents", "hex", lambda: bytes(self.memory), self.set_contents, "all 256 bytes")]


class I2CSensors(Module):
    name = "i2c_sensors"

    def load(self) -> None:
        self.bus = I2CBus()
        self.bus.attach(0x48, TMP102())
        self.bus.attach(0x50, EEPROM24C02())
        self.cdev = make_dev(self.bus, f"i2c-{os.environ.get('PYKLD_I2C_SENSORS_BUS', '1')}", mode=0o666)

    def unload(self) -> None:
        self.cdev.destroy()
