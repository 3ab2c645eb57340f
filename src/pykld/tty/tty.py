"""tty(4) for emulated serial peripherals: FreeBSD's split between the tty layer and its ttydevsw.

A peripheral subclasses SerialDevice (the ttydevsw) and is told what a UART
sees of its line: the bytes the program wrote (`received`), the line settings
(`param`: speed, framing, flow control; it may refuse a speed with EINVAL), the
modem-control outputs (`modem`: DTR, RTS), break, and the first open and last
close.  It answers through its Tty: `send()` queues bytes for the program,
paced at the line's speed when the device asks for it; `set_signals()` sets
the modem-status inputs (CTS, DSR, CD, RI).

The Tty is the character device the transports serve.  It speaks the raw
side of the Linux ABI: read gives the device's output, write goes to the
device, TCGETS2/TCSETS*2 carry the termios (the pty transport passes on the
settings it reads off the master this way) and TCFLSH flushes.  The line
discipline is not here: over a pty the host kernel's n_tty is the program's,
and over FUSE there is none, so the legacy TCGETS is ENOTTY and isatty() says
no (spec §4.3).  Over CUSE there is none either, so a port made for it is an
LdiscTty (pykld.tty.ldisc), which is its own line discipline.
"""

from __future__ import annotations

import errno
import os
import time
from select import POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM
from typing import ClassVar

from pykld.kernel.callout import callout_init_mtx, callout_reset, callout_stop
from pykld.kernel.devfs import Cdev
from pykld.kernel.file import OpenFile
from pykld.kernel.mutex import Mutex
from pykld.kernel.sched import SelInfo, selrecord, selwakeup, sleep, wakeup
from pykld.kernel.uio import Uio
from pykld.kpi.cdev import CharacterDevice, make_dev
from pykld.kpi.support import printf
from pykld.tty.termios import (
    HUPCL,
    TCFLSH,
    TCGETS2,
    TCIFLUSH,
    TCIOFLUSH,
    TCOFLUSH,
    TCSETS2,
    TCSETSF2,
    TCSETSW2,
    LineSettings,
    Termios,
)

TX_LIMIT = 64 * 1024  # bytes a device may have queued for the program before send() comes up short
SIGNALS = ("cts", "dsr", "cd", "ri")  # modem-status inputs, set by the device


class SerialDevice:
    """The ttydevsw: a serial peripheral, as its UART line sees the program."""

    #: The settings the port starts with (they then persist across opens, as on a real UART).
    line: ClassVar[LineSettings] = LineSettings()
    #: Send at the line's speed (1 + data + parity + stop bits per character), as a
    #: wire would; False hands the program every byte at once.
    paced: ClassVar[bool] = True

    def open(self, tty: Tty) -> None:
        """The first open of the port."""

    def close(self, tty: Tty) -> None:
        """The last close: what was still queued for the program is gone."""

    def received(self, tty: Tty, data: bytes) -> None:
        """Bytes the program wrote, arriving at the device."""

    def param(self, tty: Tty, line: LineSettings) -> None:
        """The program changed the line settings; raise OSError(EINVAL) to refuse them."""

    def modem(self, tty: Tty, dtr: bool, rts: bool) -> None:
        """The modem-control outputs changed (they rise at open and drop at close under HUPCL)."""

    def brk(self, tty: Tty, on: bool) -> None:
        """A break condition started or ended (transports with modem lines only)."""


class Tty(CharacterDevice):
    """One serial port: the device's output queue, the termios, the modem lines."""

    serialized = False  # the mutex below guards the state: device ops and the device's callouts share it
    seekable = False

    def __init__(self, device: SerialDevice, name: str) -> None:
        self.device = device
        self.name = name
        self.mtx = Mutex(f"tty {name}")
        self.termios = Termios.for_line(device.line)
        self.line = self.termios.line_settings()
        self.opens = 0
        self.dtr = self.rts = False
        self.signals = dict.fromkeys(SIGNALS, False)
        self.sent = self.dropped = 0  # bytes queued for the program; bytes refused or lost at close
        self._out = bytearray()
        self._tx_start = 0.0  # when the first queued byte started on the wire
        self.sel = SelInfo()
        self._pacer = callout_init_mtx(self.mtx)  # wakes readers when the next byte has arrived
        self.cdev: Cdev | None = None  # make_tty's

    # -- the device's side -----------------------------------------------------------

    def send(self, data: bytes) -> int:
        """Queue `data` for the program; returns how many bytes were taken.  With the
        port closed they are taken and lost, as on a wire nobody listens to; with the
        queue full (the program does not read) the rest is refused: the device decides
        whether to retry, drop or count an overrun."""
        with self.mtx:
            if not self.opens:
                self.dropped += len(data)
                return len(data)
            take = max(0, min(len(data), TX_LIMIT - len(self._out)))
            if not self._out:
                self._tx_start = max(self._tx_start, time.monotonic())
            self._out += data[:take]
            self.sent += take
            self.dropped += len(data) - take
            if take:
                self._wake()
            return take

    def set_signals(self, **lines: bool) -> None:
        """Set modem-status inputs: set_signals(cd=True, ri=False)."""
        unknown = set(lines) - set(SIGNALS)
        if unknown:
            raise ValueError(f"not a modem-status input: {', '.join(sorted(unknown))}")
        with self.mtx:
            self.signals.update(lines)

    @property
    def is_open(self) -> bool:
        return self.opens > 0

    def queued(self) -> int:
        """Bytes sent and not yet read by the program."""
        with self.mtx:
            return len(self._out)

    def room(self) -> int:
        """Bytes send() takes now, for a device that sends whole messages or none."""
        with self.mtx:
            return TX_LIMIT - len(self._out)

    # -- the program's side (the cdevsw) ------------------------------------------------

    def open(self, file: OpenFile) -> None:
        with self.mtx:
            self.opens += 1
            first = self.opens == 1
        if first:
            self.device.open(self)
            if self.line.speed:  # DTR and RTS rise at open, unless at B0
                self._set_outputs(True, True)

    def close(self, file: OpenFile) -> None:
        with self.mtx:
            self.opens -= 1
            last = self.opens == 0
            if last:
                self.dropped += len(self._out)
                self._out.clear()
                callout_stop(self._pacer)
        if last:
            if self.termios.cflag & HUPCL:
                self._set_outputs(False, False)
            self.device.close(self)

    def read(self, file: OpenFile, uio: Uio) -> None:
        with self.mtx:
            while not (ready := self._arrived()):
                self._arm_pacer()
                sleep(self, lock=self.mtx)  # EAGAIN for O_NONBLOCK
            count = min(ready, uio.resid)
            uio.uiomove(bytes(self._out[:count]))
            self._consume(count)

    def write(self, file: OpenFile, uio: Uio) -> None:
        data = uio.move_in()
        if data:
            self.device.received(self, data)

    def poll(self, file: OpenFile, events: int) -> int:
        with self.mtx:
            revents = events & (POLLOUT | POLLWRNORM)
            if self._arrived():
                revents |= events & (POLLIN | POLLRDNORM)
            elif events & (POLLIN | POLLRDNORM):
                self._arm_pacer()
                selrecord(self.sel)
            return revents

    def ioctl(self, file: OpenFile, cmd: int, data: bytearray | int) -> int | None:
        if cmd == TCGETS2:
            assert isinstance(data, bytearray)
            data[:] = self.termios.pack()
            return 0
        if cmd in (TCSETS2, TCSETSW2, TCSETSF2):
            assert isinstance(data, bytearray)
            self.set_termios(Termios.unpack(data))
            if cmd == TCSETSF2:
                self.flush(TCIFLUSH)
            return 0
        if cmd == TCFLSH:
            if not isinstance(data, int) or data not in (TCIFLUSH, TCOFLUSH, TCIOFLUSH):
                raise OSError(errno.EINVAL, f"TCFLSH: bad queue selector {data!r}", None)
            self.flush(data)
            return 0
        return super().ioctl(file, cmd, data)  # ENOTTY, TCGETS included: there is no line discipline here

    # -- the tty layer ---------------------------------------------------------------

    def set_termios(self, new: Termios) -> None:
        """New termios from the program: the device hears of a change in the line
        settings and may refuse it (then nothing changes)."""
        line = new.line_settings()
        if line != self.line:
            self.device.param(self, line)
            if line.speed == 0 and self.line.speed:
                self._set_outputs(False, False)  # B0 hangs up
            elif line.speed and not self.line.speed and self.opens:
                self._set_outputs(True, True)
        with self.mtx:
            self.termios, self.line = new, line

    def flush(self, queue: int) -> None:
        """TCFLSH: what the program has not read yet of the device's output is gone
        (the device's own input has been handed to it already)."""
        if queue in (TCIFLUSH, TCIOFLUSH):
            with self.mtx:
                self.dropped += len(self._out)
                self._out.clear()

    def _set_outputs(self, dtr: bool, rts: bool) -> None:
        if (dtr, rts) != (self.dtr, self.rts):
            self.dtr, self.rts = dtr, rts
            self.device.modem(self, dtr, rts)

    def _arrived(self) -> int:
        """Queued bytes that have crossed the wire by now (all of them, unpaced)."""
        byte_time = self.line.byte_time
        if not self.device.paced or not byte_time:
            return len(self._out)
        return min(len(self._out), int((time.monotonic() - self._tx_start) / byte_time + 1e-6))

    def _consume(self, count: int) -> None:
        del self._out[:count]
        self._tx_start += count * self.line.byte_time

    def _arm_pacer(self) -> None:
        if self._out and not self._pacer.pending():
            due = self._tx_start + self.line.byte_time * (1 + 1e-6) - time.monotonic()
            callout_reset(self._pacer, max(due, 0.0), self._wake)

    def _wake(self) -> None:
        wakeup(self)
        selwakeup(self.sel)


def make_tty(device: SerialDevice, name: str, uid: int = 0, gid: int = 0, mode: int = 0o660,
             transport: str | None = "pty") -> Tty:
    """Publish `device` as the serial port /dev/`name` ("ttyGPS0").  Over the pty
    transport (the default, whatever the daemon's) programs get the host's real
    termios and line discipline; transport="cuse" makes the port its own tty
    layer (pykld.tty.ldisc: modem lines, breaks), for a CUSE daemon; None leaves
    it to the daemon's.  PYKLD_TTY_TRANSPORT in the environment replaces the
    default "pty", so a driver's ports can be moved to CUSE without editing it."""
    if transport == "pty":
        transport = os.environ.get("PYKLD_TTY_TRANSPORT") or transport
    if transport == "cuse":
        from pykld.tty.ldisc import LdiscTty  # it builds on this module
        tty: Tty = LdiscTty(device, name)
    else:
        tty = Tty(device, name)
    tty.cdev = make_dev(tty, name, uid, gid, mode, transport=transport)
    printf(f"{name}: serial port, {tty.line}")
    return tty
