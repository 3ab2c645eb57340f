"""The transports, which of them this machine can run, and the picker.

Best first: cuse (true character devices), then fuse (files in a FUSE devfs,
bound at /dev/NAME as root), then sim (in process only, always there).  A
transport that cannot run is a fact about the machine: `survey()` says why in
one line (no /dev/cuse and no modprobe to load it, no fusermount3...), and the
picker passes that on instead of failing later with a traceback.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, NamedTuple, Protocol

from pykld.transport import programs
from pykld.transport.cuse import CuseTransport, cuse_unavailable
from pykld.transport.fuse import DEFAULT_DEV_DIR, FuseTransport
from pykld.transport.pty import PtyTransport
from pykld.transport.sim import SimTransport

if TYPE_CHECKING:
    from pykld.kernel.devfs import Cdev
    from pykld.kernel.kernel import Kernel

TRANSPORTS = ("cuse", "fuse", "sim")


class Transport(Protocol):
    name: str

    def start(self) -> None: ...

    def settle(self) -> None: ...

    def stop(self) -> None: ...

    def device_path(self, cdev_name: str) -> str: ...


class Availability(NamedTuple):
    name: str
    why_not: str | None  # None: usable here


def fuse_unavailable() -> str | None:
    """Why FUSE cannot serve here, in one line, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (no FUSE in this kernel, or not in this container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):  # fusermount3 too opens it as the caller
        return "/dev/fuse is not readable and writable" + ("" if os.geteuid() == 0 else " by this user")
    if os.geteuid() != 0 and programs.find("fusermount3") is None:
        return programs.missing("fusermount3")  # another user mounts through it
    return None


def survey() -> list[Availability]:
    """Every transport, best first, with why it cannot run here (None: it can)."""
    return [Availability("cuse", cuse_unavailable()), Availability("fuse", fuse_unavailable()),
            Availability("sim", None)]


def available() -> list[str]:
    """The transports this machine can run, best first."""
    return [a.name for a in survey() if a.why_not is None]


class Choice(NamedTuple):
    name: str
    how: str  # "asked for", or how the best available was picked and what was passed over


def pick(wanted: str | None) -> Choice:
    """The transport asked for, else the best available; OSError(ENODEV) saying why
    when the one asked for cannot run here."""
    found = survey()
    if wanted is not None:
        for entry in found:
            if entry.name == wanted:
                if entry.why_not is not None:
                    raise OSError(errno.ENODEV, f"transport {wanted} is not available here: {entry.why_not}", None)
                return Choice(wanted, "asked for")
        raise OSError(errno.EINVAL, f"unknown transport {wanted!r}; one of {', '.join(TRANSPORTS)}", None)
    best = next(entry for entry in found if entry.why_not is None)
    passed_over = [f"{entry.name}: {entry.why_not}" for entry in found[: found.index(best)]]
    how = "picked: best available" + (f"; {'; '.join(passed_over)}" if passed_over else "")
    return Choice(best.name, how)


def make_transport(kernel: Kernel, name: str, dev_dir: str | None, bind: bool) -> Publisher:
    """The transport `name`, with the pty transport beside it for the serial ports."""
    primary: FuseTransport | CuseTransport | SimTransport
    if name == "fuse":
        primary = FuseTransport(kernel, dev_dir or DEFAULT_DEV_DIR, bind)
    elif name == "cuse":
        primary = CuseTransport(kernel)
    else:
        primary = SimTransport()
    pty = PtyTransport(kernel, dev_dir or DEFAULT_DEV_DIR, bind, links_in_devfs=name == "fuse")
    return Publisher(kernel, primary, pty)


class Publisher:
    """What a daemon publishes through: its transport, and the pty transport for each
    device made with transport="pty" (serial ports, whatever the daemon's transport).
    A device that asks for another transport than these two gets the daemon's."""

    def __init__(self, kernel: Kernel, primary: FuseTransport | CuseTransport | SimTransport,
                 pty: PtyTransport) -> None:
        self.kernel = kernel
        self.primary = primary
        self.pty = pty
        self.name = primary.name
        if isinstance(primary, FuseTransport):
            primary.handler.foreign = pty.serves
            primary.handler.link_of = pty.slave_path  # a non-root daemon's links live in the FUSE devfs
        elif isinstance(primary, CuseTransport):
            primary.foreign = pty.serves

    def transport_of(self, cdev: Cdev) -> str:
        return self.pty.name if self.pty.serves(cdev) else self.primary.name

    def device_path(self, cdev_name: str) -> str:
        cdev = self.kernel.devfs.lookup(cdev_name)
        if cdev is not None and self.pty.serves(cdev):
            return self.pty.device_path(cdev_name)
        return self.primary.device_path(cdev_name)

    def start(self) -> None:
        self.pty.start()
        self.primary.start()

    def settle(self) -> None:
        self.pty.settle()
        self.primary.settle()

    def stop(self) -> None:
        try:
            self.primary.stop()
        finally:
            self.pty.stop()
