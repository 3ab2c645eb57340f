"""Emulated buses above the KPI: I2C (i2c-dev) and SPI (spidev).

Drivers import buses and peripheral helpers from here and publish a bus with
make_dev like any device.  See hardware.md §2 and §3 for the ABI each one follows.
"""

from pykld.bus.i2c import FUNCS, I2CBus, I2CPeripheral, SysctlNode
from pykld.bus.msg import I2C_M_RD, I2C_M_RECV_LEN, I2C_M_TEN, IicMsg
from pykld.bus.regmap import RegisterMap
from pykld.bus.smbus import smbus_pec
from pykld.bus.spi import SpiController, SpiPeripheral, SpiWire, make_spidev

__all__ = ["FUNCS", "I2C_M_RD", "I2C_M_RECV_LEN", "I2C_M_TEN", "I2CBus", "I2CPeripheral", "IicMsg",
           "RegisterMap", "SpiController", "SpiPeripheral", "SpiWire", "SysctlNode", "make_spidev", "smbus_pec"]
