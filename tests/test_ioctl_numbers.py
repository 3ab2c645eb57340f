"""ioctl command numbers: Linux's encoding (asm-generic/ioctl.h) and decoding."""

from __future__ import annotations

import pytest

from pykld import _IO, _IOR, _IOW, _IOWR, IOC_IN, IOC_INOUT, IOC_OUT, IOC_VOID, ioctl_decode


def linux_ioc(direction: int, group: str, nr: int, size: int) -> int:
    """The Linux layout, written out independently: dir 30-31, size 16-29, type 8-15, nr 0-7.
    Linux directions: _IOC_NONE 0, _IOC_WRITE 1, _IOC_READ 2."""
    return (direction << 30) | (size << 16) | (ord(group) << 8) | nr


NONE, WRITE, READ = 0, 1, 2


def test_fioc_numbers_match_libfuse() -> None:
    assert _IOR("E", 0, 8) == 0x80084500  # FIOC_GET_SIZE
    assert _IOW("E", 1, 8) == 0x40084501  # FIOC_SET_SIZE
    assert _IO("E", 2) == 0x4502  # FIOC_READ
    assert _IO("E", 3) == 0x4503  # FIOC_WRITE


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        (_IOR("k", 1, 1), 0x80016B01),  # SPI_IOC_RD_MODE
        (_IOW("k", 1, 1), 0x40016B01),  # SPI_IOC_WR_MODE
        (_IOR("E", 0x01, 4), 0x80044501),  # EVIOCGVERSION
        (_IO("U", 20), 0x5514),  # USBDEVFS_RESET
        (_IOR("f", 1, 8), 0x80086601),  # FS_IOC_GETFLAGS on LP64
    ],
)
def test_well_known_linux_commands(cmd: int, expected: int) -> None:
    assert cmd == expected


@pytest.mark.parametrize("group", ["E", "k", "\x00", "\xff"])
@pytest.mark.parametrize("nr", [0, 1, 0x7F, 0xFF])
@pytest.mark.parametrize("size", [0, 1, 8, 24, 0x3FFF])
def test_macros_equal_linux_layout(group: str, nr: int, size: int) -> None:
    assert _IOR(group, nr, size) == linux_ioc(READ, group, nr, size)
    assert _IOW(group, nr, size) == linux_ioc(WRITE, group, nr, size)
    assert _IOWR(group, nr, size) == linux_ioc(READ | WRITE, group, nr, size)
    assert _IO(group, nr) == linux_ioc(NONE, group, nr, 0)


def test_group_may_be_an_int() -> None:
    assert _IOR(0x45, 0, 8) == _IOR("E", 0, 8)


@pytest.mark.parametrize(
    ("make", "direction", "copies_in", "copies_out"),
    [
        (lambda g, n, s: _IO(g, n), IOC_VOID, False, False),
        (_IOR, IOC_OUT, False, True),
        (_IOW, IOC_IN, True, False),
        (_IOWR, IOC_INOUT, True, True),
    ],
)
def test_decode_round_trip(make, direction: int, copies_in: bool, copies_out: bool) -> None:
    size = 0 if direction == IOC_VOID else 24
    cmd = make("Z", 0x42, size)
    decoded = ioctl_decode(cmd)
    assert (decoded.direction, decoded.size, decoded.group, decoded.nr) == (direction, size, ord("Z"), 0x42)
    assert decoded.copies_in is copies_in
    assert decoded.copies_out is copies_out


def test_directions_are_linux_values() -> None:
    # The caller reads what the driver wrote: Linux _IOC_READ (2); the reverse is _IOC_WRITE (1).
    assert (IOC_VOID, IOC_IN, IOC_OUT, IOC_INOUT) == (NONE, WRITE, READ, READ | WRITE)


def test_decode_accepts_a_sign_extended_command() -> None:
    # A C int holding 0x80084500 arrives negative through some interfaces.
    assert ioctl_decode(0x80084500 - (1 << 32)) == ioctl_decode(0x80084500)


@pytest.mark.parametrize("size", [-1, 0x4000, 1 << 20])
def test_size_out_of_range(size: int) -> None:
    for make in (_IOR, _IOW, _IOWR):
        with pytest.raises(ValueError):
            make("E", 0, size)


@pytest.mark.parametrize("nr", [-1, 0x100])
def test_number_out_of_range(nr: int) -> None:
    with pytest.raises(ValueError):
        _IO("E", nr)
    with pytest.raises(ValueError):
        _IOR("E", nr, 8)


@pytest.mark.parametrize("group", [-1, 0x100, "\u0100"])
def test_type_out_of_range(group: str | int) -> None:
    with pytest.raises(ValueError):
        _IO(group, 0)
