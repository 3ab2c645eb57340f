"""PyPI's spidev (py-spidev) against examples/spi_flash.py and examples/spi_adc.py, as a
user's program drives them: each scenario runs a client process as user nobody and
checks what it saw against the chip's state, set and read through sysctl.  spidev is a
development dependency (`make deps` builds it: gcc, python3-dev), so it is never skipped.  The FUSE
tests (test_spi_fuse.py) and the CUSE tests (tests/cuse/test_cuse_spi.py) share them.
"""

from __future__ import annotations

import errno
import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from .conftest import AS_NOBODY

Sysctl = Callable[..., Any]  # sysctl(name) -> value; sysctl(name, value) sets it

# The client's preamble: open the device as py-spidev does (open(bus, cs) for a /dev
# node, open_path for a devfs path elsewhere); the body fills `out`, printed as JSON.
PREAMBLE = """
import ctypes, errno, json, os, struct, sys, time
import spidev
path = sys.argv[1]
s = spidev.SpiDev()
if path.startswith("/dev/spidev"):
    bus, cs = path[len("/dev/spidev"):].split(".")
    s.open(int(bus), int(cs))
else:
    s.open_path(path)
out = {}

def wait_ready():
    for _ in range(20000):
        if not s.xfer2([0x05, 0])[1] & 1:
            return
        time.sleep(0.0005)
    raise SystemExit("WIP never cleared")

def oserror(call):
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0
"""


def client(path: str, body: str) -> dict[str, Any]:
    """Run `body` in a py-spidev client as nobody; return its `out`."""
    script = PREAMBLE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    done = subprocess.run([*AS_NOBODY.split(), sys.executable, "-c", script, path], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def flash_round_trip(path: str, sysctl: Sysctl) -> None:
    """JEDEC ID, a page programmed and read back, an erase back to 0xFF."""
    sysctl("dev.w25q64.0.time_scale", "0.01")  # WIP still shows, for a few µs to ms
    out = client(path, """
        s.max_speed_hz = 20_000_000
        out["jedec"] = s.xfer2([0x9F, 0, 0, 0])
        out["jedec_xfer"] = s.xfer([0x9F, 0, 0, 0])
        s.writebytes([0x06])
        s.writebytes2(bytes([0x02, 0x00, 0x20, 0x00]) + bytes(range(256)))  # a whole page
        wait_ready()
        out["page"] = s.xfer2([0x03, 0x00, 0x20, 0x00] + [0] * 256)[4:]
        out["fast"] = s.xfer2([0x0B, 0x00, 0x20, 0xFE, 0xAA, 0, 0, 0])[5:]
        out["readbytes"] = s.readbytes(4)  # a half-duplex read: MOSI low is no command
        s.xfer2([0x06]); s.xfer2([0x20, 0x00, 0x20, 0x80])  # sector erase, an address inside it
        wait_ready()
        out["erased"] = s.xfer2([0x03, 0x00, 0x20, 0x00] + [0] * 4)[4:]
        out["speed"] = s.max_speed_hz
    """)
    assert out["jedec"] == out["jedec_xfer"] == [0xFF, 0xEF, 0x40, 0x17]
    assert out["page"] == list(range(256))
    assert out["fast"] == [0xFE, 0xFF, 0xFF]
    assert out["readbytes"] == [0xFF] * 4
    assert out["erased"] == [0xFF] * 4
    assert (sysctl("dev.w25q64.0.programs"), sysctl("dev.w25q64.0.erases")) == (1, 1)
    assert sysctl("dev.spidev.0.0.max_speed_hz") == out["speed"] == 20_000_000
    assert sysctl("dev.w25q64.0.status") == 0


def spidev_settings(path: str, sysctl: Sysctl) -> None:
    """py-spidev's setters write the mode and read it back; the controller's limits are EINVAL."""
    out = client(path, """
        s.mode = 3
        out["mode3"] = [s.mode, s.xfer2([0x9F, 0, 0, 0])]
        s.mode = 1
        out["mode1_jedec"] = s.xfer2([0x9F, 0, 0, 0])  # the flash follows modes 0 and 3 only
        s.mode = 0
        s.lsbfirst = True
        out["lsb"] = [s.lsbfirst, s.xfer2([0xF9, 0, 0, 0])]  # 0x9F, sent LSB first
        s.lsbfirst = False
        s.cshigh = True
        out["cshigh"] = s.cshigh
        s.cshigh = False
        s.loop = True
        out["loop"] = s.xfer2([1, 2, 0xFE])  # MOSI fed back to MISO
        s.loop = False
        s.bits_per_word = 16
        out["bits16"] = s.bits_per_word
        out["bits12"] = oserror(lambda: setattr(s, "bits_per_word", 12))
        s.bits_per_word = 8
        out["threewire"] = oserror(lambda: setattr(s, "threewire", True))
        out["no_cs"] = oserror(lambda: setattr(s, "no_cs", True))
        out["mode_after"] = s.mode
    """)
    assert out["mode3"] == [3, [0xFF, 0xEF, 0x40, 0x17]]
    assert out["mode1_jedec"] == [0xFF] * 4
    assert out["lsb"] == [True, [0xFF, 0xF7, 0x02, 0xE8]]  # EF 40 17, received LSB first
    assert out["cshigh"] is True
    assert out["loop"] == [1, 2, 0xFE]
    assert (out["bits16"], out["bits12"]) == (16, errno.EINVAL)
    assert (out["threewire"], out["no_cs"], out["mode_after"]) == (errno.EINVAL, errno.EINVAL, 0)
    assert sysctl("dev.spidev.0.0.mode") == 0


def adc_conversions(path: str, sysctl: Sysctl) -> None:
    """MCP3008 conversions match the channel voltages set by sysctl."""
    volts = [0.0, 0.4, 1.0, 1.65, 2.2, 2.75, 3.0, 3.3]
    for ch, value in enumerate(volts):
        sysctl(f"dev.mcp3008.0.ch{ch}", str(value))
    out = client(path, """
        s.max_speed_hz = 1_350_000
        out["codes"] = []
        for ch in range(8):
            r = s.xfer2([1, 0x80 | ch << 4, 0])
            out["codes"].append((r[1] & 3) << 8 | r[2])
        out["raw"] = s.xfer2([1, 0x80 | 3 << 4, 0])
        s.mode = 3
        r = s.xfer([1, 0x30, 0])  # differential CH2- CH3+ (1.65 V - 1.0 V), in mode 1,1
        out["diff"] = (r[1] & 3) << 8 | r[2]
    """)
    assert out["codes"] == [min(1023, math.floor(1024 * v / 3.3 + 1e-9)) for v in volts]
    assert out["raw"] == [255, 250, 0]  # 1.65 V of 3.3 V: 512
    assert out["diff"] == 201
    assert sysctl("dev.mcp3008.0.conversions") == 10


def bad_input(path: str, sysctl: Sysctl) -> None:
    """Bad pointers and sizes get spidev's errnos, and the device goes on serving."""
    out = client(path, """
        libc = ctypes.CDLL(None, use_errno=True)
        fd = s.fileno()
        def message(*transfers, size=None):
            arg = b"".join(struct.pack("=QQIIHBBBBBB", tx, rx, n, 0, 0, 0, 0, 0, 0, 0, 0)
                           for tx, rx, n in transfers)
            size = len(arg) if size is None else size
            buf = ctypes.create_string_buffer(arg, max(size, len(arg)))
            cmd = 0x40006B00 | size << 16
            if libc.ioctl(fd, ctypes.c_ulong(cmd), buf) < 0:
                return ctypes.get_errno()
            return 0
        rx = ctypes.create_string_buffer(8)
        out["bad_tx"] = message((0x10, ctypes.addressof(rx), 4))
        big = ctypes.create_string_buffer(4097)
        out["oversized"] = message((ctypes.addressof(big), 0, 4097))
        out["bad_array"] = libc.ioctl(fd, ctypes.c_ulong(0x40206B00), ctypes.c_void_p(0x10)) < 0 and \\
            ctypes.get_errno()
        out["partial"] = message((ctypes.addressof(big), 0, 1), size=33)
        out["read"] = oserror(lambda: os.read(fd, 4097))
        out["write"] = oserror(lambda: os.write(fd, bytes(4097)))
        out["jedec"] = s.xfer2([0x9F, 0, 0, 0])
    """)
    assert (out["bad_tx"], out["oversized"], out["bad_array"]) == (errno.EFAULT, errno.EMSGSIZE, errno.EFAULT)
    assert out["partial"] == errno.EINVAL
    assert (out["read"], out["write"]) == (errno.EMSGSIZE, errno.EMSGSIZE)
    assert out["jedec"] == [0xFF, 0xEF, 0x40, 0x17]


FLASH_SCENARIOS = [flash_round_trip, spidev_settings, bad_input]
