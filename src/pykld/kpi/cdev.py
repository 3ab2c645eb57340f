"""The character-device switch (cdevsw) and make_dev(9)/destroy_dev(9).

A driver subclasses CharacterDevice and overrides the operations it serves;
the rest behave as FreeBSD's defaults (nullop open/close, ENODEV read/write,
always-ready poll) except ioctl, which says ENOTTY as Linux callers expect.
Operations raise OSError(errno.X) to fail; anything else is a driver fault.
"""

from __future__ import annotations

from typing import ClassVar

from pykld.kernel.devfs import Cdev, no_ioctl, no_poll, no_read, no_write
from pykld.kernel.file import OpenFile
from pykld.kernel.sched import curthread
from pykld.kernel.uio import Uio


class CharacterDevice:
    #: One operation at a time per device, under a lock that sleep() releases
    #: (the seed's SharedModule mutex).  False: the driver locks for itself.
    serialized: ClassVar[bool] = True
    #: The caller's file offset means something.  False for streams (pipes,
    #: serial lines): pread/pwrite fail with ESPIPE and the offset is always 0.
    seekable: ClassVar[bool] = True

    def open(self, file: OpenFile) -> None:
        """A caller opened the device; `file.flags` has its open flags."""

    def close(self, file: OpenFile) -> None:
        """That open is closed (called once per open)."""

    def read(self, file: OpenFile, uio: Uio) -> None:
        no_read(file, uio)

    def write(self, file: OpenFile, uio: Uio) -> None:
        no_write(file, uio)

    def ioctl(self, file: OpenFile, cmd: int, data: bytearray | int) -> int | None:
        """`data` is the argument buffer for sized commands (changes to it are copied
        out for _IOR/_IOWR), or the plain integer argument for _IO commands."""
        no_ioctl(file, cmd, data)
        return None

    def poll(self, file: OpenFile, events: int) -> int:
        """Return the ready subset of `events`; when none is ready, selrecord() the
        condition that selwakeup() will signal."""
        return no_poll(file, events)


def make_dev(device: CharacterDevice, name: str, uid: int = 0, gid: int = 0, mode: int = 0o600,
             transport: str | None = None) -> Cdev:
    """Publish `device` as /dev/`name` (directories allowed: "bus/i2c-1"), over the
    daemon's transport or the one named ("pty" for a serial port: pykld.tty)."""
    td = curthread()
    if td is None or td.kernel is None:
        raise RuntimeError("make_dev() outside a module event or device operation")
    return td.kernel.make_dev(device, name, uid, gid, mode, td.module, transport)


def destroy_dev(cdev: Cdev) -> None:
    """Remove the device; its open files get ENXIO from now on and close quietly."""
    cdev.destroy()
