"""SPI over CUSE (inside the VM): /dev/spidev0.0 and /dev/spidev0.1 are true character
devices, and PyPI's spidev opens them by bus and chip select, as on a board.  The same
scenarios as over FUSE (tests/transport/spidev_clients.py), callers as nobody; CUSE
fetches SPI_IOC_MESSAGE's tx buffers in one retry round (copyin_many)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator

import pytest
from transport.conftest import EXAMPLES, require
from transport.spidev_clients import FLASH_SCENARIOS, adc_conversions

from pykld import Kernel
from pykld.transport.cuse import CuseTransport, cuse_available


@pytest.fixture
def spi() -> Iterator[Kernel]:
    require("CUSE", os.geteuid() == 0 and cuse_available(), "no CUSE here (root and /dev/cuse needed)")
    kernel = Kernel()
    transport = CuseTransport(kernel)
    transport.start()
    try:
        kernel.kldload(str(EXAMPLES / "spi_flash.py"))
        kernel.kldload(str(EXAMPLES / "spi_adc.py"))
        yield kernel
    finally:
        kernel.shutdown()
        transport.stop()


def test_the_nodes_are_character_devices(spi: Kernel) -> None:
    for path in ("/dev/spidev0.0", "/dev/spidev0.1"):
        st = os.stat(path)
        assert stat.S_ISCHR(st.st_mode) and st.st_mode & 0o777 == 0o666


@pytest.mark.parametrize("scenario", FLASH_SCENARIOS, ids=lambda f: f.__name__)
def test_spidev_drives_the_flash(spi: Kernel, scenario: Callable[..., None]) -> None:
    scenario("/dev/spidev0.0", spi.sysctl)


def test_spidev_reads_the_adc(spi: Kernel) -> None:
    adc_conversions("/dev/spidev0.1", spi.sysctl)
