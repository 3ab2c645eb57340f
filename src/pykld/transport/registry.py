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
from pykld.transport.sim import SimTransport

if TYPE_CHECKING:
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


def make_transport(kernel: Kernel, name: str, dev_dir: str | None, bind: bool) -> Transport:
    if name == "fuse":
        return FuseTransport(kernel, dev_dir or DEFAULT_DEV_DIR, bind)
    if name == "cuse":
        return CuseTransport(kernel)
    return SimTransport()
