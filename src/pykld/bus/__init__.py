"""Emulated buses above the KPI: I2C (i2c-dev) and SPI (spidev)."""
