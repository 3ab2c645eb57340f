"""SPI over FUSE on this machine, as root: PyPI's spidev drives examples/spi_flash.py
and examples/spi_adc.py, callers running as nobody.  SPI_IOC_MESSAGE's transfer array
comes with the ioctl (its size is encoded); the tx and rx buffers behind its pointers
are reached in the caller's memory (process_vm_readv/writev)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_cli import Pykld, pykld, require_free  # noqa: F401 - a fixture

from pykld import Kernel
from pykld.transport.fuse import FuseTransport

from .conftest import EXAMPLES, published, require_fuse, require_root
from .spidev_clients import FLASH_SCENARIOS, adc_conversions, client


@pytest.fixture
def spi(fuse: tuple[Kernel, FuseTransport]) -> Iterator[tuple[Kernel, FuseTransport]]:
    require_root()
    kernel, transport = fuse
    kernel.kldload(str(EXAMPLES / "spi_flash.py"))
    kernel.kldload(str(EXAMPLES / "spi_adc.py"))
    yield kernel, transport


@pytest.mark.parametrize("scenario", FLASH_SCENARIOS, ids=lambda f: f.__name__)
def test_spidev_drives_the_flash(spi: tuple[Kernel, FuseTransport], scenario: Callable[..., None]) -> None:
    kernel, transport = spi
    scenario(transport.device_path("spidev0.0"), kernel.sysctl)


def test_spidev_reads_the_adc(spi: tuple[Kernel, FuseTransport]) -> None:
    kernel, transport = spi
    adc_conversions(transport.device_path("spidev0.1"), kernel.sysctl)


def test_a_daemon_publishes_dev_spidev0_0_and_pykld_sysctl_drives_it(pykld: Pykld, tmp_path: Path) -> None:  # noqa: F811
    """The user's session: `pykld load`, spidev's open(0, 0) of /dev/spidev0.0, `pykld sysctl`."""
    require_root()
    require_fuse()
    require_free("/dev/spidev0.0")
    assert "Loaded spi_flash" in pykld.ok("load", "examples/spi_flash.py", "--transport", "fuse").stdout
    assert pykld.ok("sysctl", "dev.w25q64.0.time_scale=0").stdout == "dev.w25q64.0.time_scale: 1.0 -> 0.0\n"
    image = tmp_path / "w25q64.img"
    pykld.ok("sysctl", f"dev.w25q64.0.file={image}")
    out = client("/dev/spidev0.0", """
        out["jedec"] = s.xfer2([0x9F, 0, 0, 0])
        s.xfer2([0x06]); s.xfer2([0x02, 0x01, 0x00, 0x00] + list(b"persist"))
        wait_ready()  # one status read: time_scale 0 makes the program instant
    """)
    assert out["jedec"] == [0xFF, 0xEF, 0x40, 0x17]
    assert image.read_bytes()[0x10000:0x10007] == b"persist"
    assert pykld.ok("sysctl", "dev.w25q64.0.programs").stdout == "dev.w25q64.0.programs: 1\n"
    assert "dev.spidev.0.0.messages: 4\n" in pykld.ok("sysctl", "dev.spidev.0.0").stdout
    refused = pykld("sysctl", "dev.w25q64.0.status=0")
    assert refused.returncode == 1 and "read only" in refused.stderr
    pykld.ok("unload", "spi_flash")
    assert not os.path.lexists("/dev/spidev0.0")


@pytest.fixture
def spi_without_caller_memory(monkeypatch: pytest.MonkeyPatch, dev_dir: str) -> Iterator[str]:
    """A daemon that may not reach its callers' memory (as without ptrace rights)."""
    require_fuse()
    monkeypatch.setenv("PYKLD_FUSE_USER_MEMORY", "off")
    with published(lambda kernel: FuseTransport(kernel, dev_dir, bind=False)) as (kernel, transport):
        kernel.kldload(str(EXAMPLES / "spi_flash.py"))
        kernel.sysctl("dev.w25q64.0.time_scale", 0.0)
        yield transport.device_path("spidev0.0")


def test_without_caller_memory_settings_and_read_write_work_and_messages_are_eopnotsupp(
        spi_without_caller_memory: str) -> None:
    out = client(spi_without_caller_memory, """
        s.mode = 3
        s.max_speed_hz = 5_000_000
        out["settings"] = [s.mode, s.max_speed_hz]
        s.writebytes([0x06])                       # write(2): WREN
        out["readbytes"] = s.readbytes(2)
        out["xfer2"] = oserror(lambda: s.xfer2([0x05, 0]))
    """)
    assert out == {"settings": [3, 5_000_000], "readbytes": [0xFF, 0xFF], "xfer2": errno.EOPNOTSUPP}
