"""ioctl command numbers, Linux encoding (asm-generic/ioctl.h) with FreeBSD's names.

A command packs direction, argument size, a type byte and a number:
bits 0-7 number, 8-15 type, 16-29 size, 30-31 direction.  The transports copy
an ioctl's argument in and out by the size encoded here, as the Linux kernel
does for FUSE's restricted ioctls.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

IOC_NRBITS = 8
IOC_TYPEBITS = 8
IOC_SIZEBITS = 14
IOC_DIRBITS = 2

IOC_NRSHIFT = 0
IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS
IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS
IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS

IOCPARM_MAX = (1 << IOC_SIZEBITS) - 1

# Directions, as seen from the caller: IOC_IN copies the argument into the
# driver before the call, IOC_OUT copies it back to the caller after.
IOC_VOID = 0
IOC_OUT = 2  # Linux _IOC_READ: the caller reads what the driver wrote
IOC_IN = 1  # Linux _IOC_WRITE: the caller writes what the driver reads
IOC_INOUT = IOC_IN | IOC_OUT


def _type_byte(group: str | int) -> int:
    value = ord(group) if isinstance(group, str) else group
    if not 0 <= value < (1 << IOC_TYPEBITS):
        raise ValueError(f"ioctl type {group!r} does not fit in {IOC_TYPEBITS} bits")
    return value


def _IOC(direction: int, group: str | int, nr: int, size: int) -> int:  # noqa: N802 - C name
    if not 0 <= nr < (1 << IOC_NRBITS):
        raise ValueError(f"ioctl number {nr} does not fit in {IOC_NRBITS} bits")
    if not 0 <= size <= IOCPARM_MAX:
        raise ValueError(f"ioctl argument size {size} exceeds {IOCPARM_MAX}")
    return (
        (direction << IOC_DIRSHIFT)
        | (_type_byte(group) << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | (size << IOC_SIZESHIFT)
    )


def _IO(group: str | int, nr: int) -> int:  # noqa: N802
    """A command without an argument buffer (the argument, if any, is a plain integer)."""
    return _IOC(IOC_VOID, group, nr, 0)


def _IOR(group: str | int, nr: int, size: int) -> int:  # noqa: N802
    """The driver fills `size` bytes that are copied out to the caller."""
    return _IOC(IOC_OUT, group, nr, size)


def _IOW(group: str | int, nr: int, size: int) -> int:  # noqa: N802
    """The caller's `size` bytes are copied in to the driver."""
    return _IOC(IOC_IN, group, nr, size)


def _IOWR(group: str | int, nr: int, size: int) -> int:  # noqa: N802
    """`size` bytes are copied in, and copied back out after the driver ran."""
    return _IOC(IOC_INOUT, group, nr, size)


class IoctlCmd(NamedTuple):
    """A decoded command number."""

    direction: int
    size: int
    group: int
    nr: int

    @property
    def copies_in(self) -> bool:
        return bool(self.direction & IOC_IN)

    @property
    def copies_out(self) -> bool:
        return bool(self.direction & IOC_OUT)


@functools.lru_cache(maxsize=1024)  # every ioctl decodes its command; a driver has a few
def decode(cmd: int) -> IoctlCmd:
    """Split a command number into direction, size, type and number."""
    cmd &= 0xFFFFFFFF
    return IoctlCmd(
        direction=(cmd >> IOC_DIRSHIFT) & ((1 << IOC_DIRBITS) - 1),
        size=(cmd >> IOC_SIZESHIFT) & ((1 << IOC_SIZEBITS) - 1),
        group=(cmd >> IOC_TYPESHIFT) & ((1 << IOC_TYPEBITS) - 1),
        nr=(cmd >> IOC_NRSHIFT) & ((1 << IOC_NRBITS) - 1),
    )
