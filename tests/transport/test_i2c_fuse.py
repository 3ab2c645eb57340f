"""examples/i2c_sensors.py over FUSE as root, driven by i2c-tools and smbus2, its state by `pykld sysctl`.

One daemon for the file (`pykld load`, bound at /dev/i2c-1), as a user runs it.
FUSE carries no ioctl data for the i2c-dev numbers (they are not _IOC-encoded):
the root daemon reaches each caller's memory itself (process_vm_readv), so
every client works; `test_without_caller_memory_*` shows what is left without.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from i2c_tools import (
    check_absent_address,
    check_as_nobody,
    check_bad_input,
    check_eeprom,
    check_i2cdetect,
    check_smbus2,
    check_temperature,
    have_i2c_tools,
    ok,
)
from test_cli import Pykld

from transport.conftest import require, require_fuse, require_root

BUS = 1


@pytest.fixture(scope="module")
def daemon() -> Iterator[Pykld]:
    require_root()
    require_fuse()
    require("I2C_TOOLS", have_i2c_tools(), "i2c-tools is not installed (Debian package i2c-tools)")
    assert not os.path.lexists(f"/dev/i2c-{BUS}"), f"/dev/i2c-{BUS} exists here already: a real bus, or a pykld left"
    os.makedirs("/run/pykld-test", mode=0o755, exist_ok=True)
    tool = Pykld(tempfile.mkdtemp(prefix="i2c-", dir="/run/pykld-test"))
    try:
        tool.ok("load", "examples/i2c_sensors.py", "--transport", "fuse")
        yield tool
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            tool("shutdown", timeout=30)
        with contextlib.suppress(OSError):
            print(open(os.path.join(tool.run_dir, "daemon.log")).read())
        shutil.rmtree(tool.run_dir, ignore_errors=True)


def sysctl_of(daemon: Pykld):  # type: ignore[no-untyped-def]
    def sysctl(name: str, value: str | None) -> str:
        out = daemon.ok("sysctl", name if value is None else f"{name}={value}").stdout.strip()
        return out.split(": ", 1)[1].split(" -> ")[-1]
    return sysctl


def test_i2cdetect_lists_exactly_48_and_50(daemon: Pykld) -> None:
    check_i2cdetect(BUS)


def test_i2cget_reads_the_temperature_sysctl_set(daemon: Pykld) -> None:
    check_temperature(BUS, sysctl_of(daemon))


def test_eeprom_through_i2cset_i2ctransfer_and_i2cdump(daemon: Pykld) -> None:
    check_eeprom(BUS, sysctl_of(daemon))


def test_smbus2_and_i2c_rdwr(daemon: Pykld) -> None:
    check_smbus2(BUS)


def test_an_absent_chip_is_read_failed(daemon: Pykld) -> None:
    check_absent_address(BUS)


def test_nobody_drives_the_0666_bus(daemon: Pykld) -> None:
    check_as_nobody(BUS)


def test_bad_input_gets_linux_errnos_and_the_daemon_keeps_serving(daemon: Pykld) -> None:
    check_bad_input(BUS)
    assert "Traceback" not in ok("cat", os.path.join(daemon.run_dir, "daemon.log"))


def test_sysctl_lists_the_chips_nodes(daemon: Pykld) -> None:
    listing = daemon.ok("sysctl", "dev.tmp102", "dev.eeprom").stdout
    for node in ("dev.tmp102.0.desc: TI TMP102 temperature sensor", "dev.tmp102.0.location: addr=0x48",
                 "dev.eeprom.0.location: addr=0x50"):
        assert node in listing, listing
    before = int(daemon.ok("sysctl", "dev.tmp102.0.transfers").stdout.split(": ")[1])
    ok("i2cget", "-y", str(BUS), "0x48", "0x00", "w")
    assert int(daemon.ok("sysctl", "dev.tmp102.0.transfers").stdout.split(": ")[1]) == before + 1
    refused = daemon("sysctl", "dev.tmp102.0.temperature=200")
    assert refused.returncode == 1 and "Invalid argument" in refused.stderr


def test_read_and_write_after_i2c_slave(daemon: Pykld) -> None:
    fd = os.open(f"/dev/i2c-{BUS}", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0x0703, 0x48)  # I2C_SLAVE: an integer, which FUSE always carries
        assert os.write(fd, b"\x01") == 1
        assert os.read(fd, 2) == b"\x60\xa0"
    finally:
        os.close(fd)
