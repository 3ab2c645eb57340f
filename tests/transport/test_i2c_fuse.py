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
import sys
import tempfile
from collections.abc import Iterator

import pytest
from i2c_tools import I2CSensorsSuite, Sysctl, check_bad_input, have_i2c_tools, ok, run
from test_cli import Pykld

from pykld.transport.fuse import FuseTransport
from transport.conftest import EXAMPLES, published, require, require_fuse, require_root

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


def sysctl_of(daemon: Pykld) -> Sysctl:
    def sysctl(name: str, value: str | None) -> str:
        out = daemon.ok("sysctl", name if value is None else f"{name}={value}").stdout.strip()
        return out.split(": ", 1)[1].split(" -> ")[-1]
    return sysctl


@pytest.fixture
def i2c(daemon: Pykld) -> tuple[int, Sysctl]:
    return BUS, sysctl_of(daemon)


class TestOverFuse(I2CSensorsSuite):
    """i2c-tools and smbus2, each check of tests/i2c_tools.py."""


def test_bad_input_leaves_no_traceback(daemon: Pykld) -> None:
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


@pytest.fixture
def without_caller_memory(monkeypatch: pytest.MonkeyPatch, dev_dir: str) -> Iterator[int]:
    """The bus over FUSE where the daemon may not reach callers' memory (as without ptrace
    rights; PYKLD_FUSE_USER_MEMORY=off says so), as /dev/i2c-11."""
    require_root()
    require_fuse()
    require("I2C_TOOLS", have_i2c_tools(), "i2c-tools is not installed (Debian package i2c-tools)")
    assert not os.path.lexists("/dev/i2c-11"), "/dev/i2c-11 exists here already"
    monkeypatch.setenv("PYKLD_FUSE_USER_MEMORY", "off")
    monkeypatch.setenv("PYKLD_I2C_SENSORS_BUS", "11")
    with published(lambda kernel: FuseTransport(kernel, dev_dir, bind=True)) as (kernel, transport):
        kernel.kldload(str(EXAMPLES / "i2c_sensors.py"))
        transport.settle()  # the bind at /dev/i2c-11 is made by the transport's own thread
        yield 11


def test_without_caller_memory_pointer_ioctls_are_eopnotsupp_and_read_write_work(without_caller_memory: int) -> None:
    bus = without_caller_memory
    done = run("i2cdetect", "-y", str(bus))
    assert (done.returncode, done.stderr.strip()) == (
        1, "Error: Could not get the adapter functionality matrix: Operation not supported")
    smbus2 = run(sys.executable, "-c", f"import smbus2; smbus2.SMBus({bus})")
    assert "OSError: [Errno 95] Operation not supported" in smbus2.stderr
    fd = os.open(f"/dev/i2c-{bus}", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0x0703, 0x50)  # I2C_SLAVE
        assert os.write(fd, b"\x20\x11\x22") == 3  # a byte write at 0x20 and 0x21
        assert os.write(fd, b"\x20") == 1
        assert os.read(fd, 2) == b"\x11\x22"
    finally:
        os.close(fd)
