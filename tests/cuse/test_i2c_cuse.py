"""examples/i2c_sensors.py over CUSE (inside the VM): a true character device that i2c-tools
and smbus2 drive, with the stock kernel's i2c-stub as the oracle for what i2cdetect prints
and which errnos i2c-dev gives for bad input.  The bus is /dev/i2c-10 here (as in
hardware.md §7): the guest kernel numbers its own adapters from 0, and i2c-stub takes 1."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from i2c_tools import (
    EXPECTED_ERRNOS,
    I2CSensorsSuite,
    Sysctl,
    check_i2cdetect,
    errnos_of_bad_calls,
    have_i2c_tools,
    ok,
    run,
)
from transport.conftest import EXAMPLES, require

from pykld import Kernel
from pykld.transport.cuse import CuseTransport, cuse_available

BUS = 10


@pytest.fixture(scope="module")
def sensors() -> Iterator[Kernel]:
    require("CUSE", os.geteuid() == 0 and cuse_available(), "no CUSE here (root and /dev/cuse needed)")
    require("I2C_TOOLS", have_i2c_tools(), "i2c-tools is not installed (Debian package i2c-tools)")
    kernel = Kernel()
    transport = CuseTransport(kernel)
    transport.start()
    try:
        os.environ["PYKLD_I2C_SENSORS_BUS"] = str(BUS)
        try:
            kernel.kldload(str(EXAMPLES / "i2c_sensors.py"))
        finally:
            del os.environ["PYKLD_I2C_SENSORS_BUS"]
        yield kernel
    finally:
        kernel.shutdown()
        transport.stop()


def sysctl_of(kernel: Kernel) -> Sysctl:
    def sysctl(name: str, value: str | None) -> str:
        if value is not None:
            kernel.sysctl(name, value)
        value = kernel.sysctl(name)
        return value.hex() if isinstance(value, bytes) else str(value)
    return sysctl


@pytest.fixture(scope="module")
def stub_bus(sensors: Kernel) -> Iterator[int]:
    """The kernel's own SMBus stub with chips at 0x48 and 0x50, behind the kernel's i2c-dev."""
    loaded = run("modprobe", "i2c-dev").returncode == 0 and \
        run("modprobe", "i2c-stub", "chip_addr=0x48,0x50").returncode == 0
    require("VM", loaded, "i2c-dev and i2c-stub do not load here")
    try:
        names = {p.parent.name: p.read_text().strip() for p in Path("/sys/class/i2c-dev").glob("*/name")}
        number = next(int(dev.split("-")[1]) for dev, name in names.items() if name.startswith("SMBus stub"))
        assert number != BUS, f"the stub took bus {BUS}, ours"
        yield number
    finally:
        run("rmmod", "i2c-stub")


def test_a_true_character_device(sensors: Kernel) -> None:
    assert stat.S_ISCHR(os.stat(f"/dev/i2c-{BUS}").st_mode)
    assert stat.S_IMODE(os.stat(f"/dev/i2c-{BUS}").st_mode) == 0o666


def test_i2cdetect_prints_what_it_prints_for_the_kernel_s_stub(sensors: Kernel, stub_bus: int) -> None:
    check_i2cdetect(BUS)
    assert ok("i2cdetect", "-y", str(BUS)) == ok("i2cdetect", "-y", str(stub_bus))


def test_bad_input_gets_the_errnos_of_the_kernel_s_i2c_dev(sensors: Kernel, stub_bus: int) -> None:
    assert errnos_of_bad_calls(stub_bus) == EXPECTED_ERRNOS  # the oracle agrees with the table


def test_an_absent_chip_fails_as_on_the_stub(sensors: Kernel, stub_bus: int) -> None:
    stub = subprocess.run(["i2cget", "-y", str(stub_bus), "0x51", "0x00"], capture_output=True, text=True,
                          check=False)
    assert (stub.returncode, stub.stderr.strip()) == (2, "Error: Read failed")


@pytest.fixture
def i2c(sensors: Kernel) -> tuple[int, Sysctl]:
    return BUS, sysctl_of(sensors)


class TestOverCuse(I2CSensorsSuite):
    """i2c-tools and smbus2, each check of tests/i2c_tools.py."""
