"""The tty ioctls of a port made with transport="cuse", through the CUSE transport's
retry rounds against the simulated kernel of test_cuse_ioctl_rounds: the legacy
numbers carry pointers the driver follows, and what the driver does happens once
per call however many rounds the call takes."""

from __future__ import annotations

import os
import struct

from pykld import Kernel
from pykld.kernel.fd import SimMemory
from pykld.transport.cuse import CuseHandler
from pykld.tty import termios as t

from .conftest import write_driver
from .test_cuse_ioctl_rounds import kernel_ioctl

RECORDER = """
from pykld import Module
from pykld.tty import LineSettings, SerialDevice, make_tty

class Recorder(SerialDevice):
    paced = False
    def __init__(self): self.events = []
    def param(self, tty, line): self.events.append(("param", line.speed))
    def modem(self, tty, dtr, rts): self.events.append(("modem", dtr, rts))

class RecorderModule(Module):
    name = "recorder"
    def load(self):
        self.device = Recorder()
        make_tty(self.device, "ttyRND0", transport="cuse")
"""


def test_termios_and_modem_lines_cross_the_rounds_once_each(tmp_path) -> None:  # type: ignore[no-untyped-def]
    kernel = Kernel()
    try:
        kernel.kldload(write_driver(tmp_path, "recorder", RECORDER))
        device = kernel.module("recorder").instance.device
        cdev = kernel.lookup("ttyRND0")
        handler = CuseHandler(kernel, cdev)
        handler.files[3] = kernel.open_cdev(cdev, os.O_RDWR)
        memory = SimMemory()
        tio = memory.alloc(t.TERMIOS)
        assert kernel_ioctl(handler, 3, t.TCGETS, tio, memory) == (0, 2)  # isatty: one retry for the out-iovec
        legacy = bytearray(memory.read(tio, t.TERMIOS))
        assert struct.unpack_from("<I", legacy, 8)[0] & t.CBAUD == 0xD  # B9600
        assert legacy[17:] == t.STD_CC[:19]  # all 36 bytes came back: c_cc to its end
        struct.pack_into("<I", legacy, 8, (struct.unpack_from("<I", legacy, 8)[0] & ~t.CBAUD) | 0xC)  # B4800
        device.events.clear()
        assert kernel_ioctl(handler, 3, t.TCSETSW, memory.alloc(bytes(legacy)), memory) == (0, 2)
        assert device.events == [("param", 4800)]  # once, though the driver ran twice
        bits = memory.alloc(struct.pack("<i", t.TIOCM_DTR))
        assert kernel_ioctl(handler, 3, t.TIOCMBIC, bits, memory) == (0, 2)
        assert device.events[-1] == ("modem", False, True)
        out = memory.alloc(4)
        kernel_ioctl(handler, 3, t.TIOCMGET, out, memory)
        assert struct.unpack("<i", memory.read(out, 4))[0] & (t.TIOCM_DTR | t.TIOCM_RTS) == t.TIOCM_RTS
    finally:
        kernel.shutdown()
