"""uio(9): offset and resid, short transfers, EOF, directions and copies."""

from __future__ import annotations

import pytest

from pykld import Uio, UioRw

MESSAGE = b"Default hello message\n"


def test_move_out_from_offset_zero() -> None:
    uio = Uio.for_read(0, 100)
    assert uio.move_out(MESSAGE) == len(MESSAGE)
    assert uio.tobytes() == MESSAGE
    assert (uio.offset, uio.resid, uio.size) == (len(MESSAGE), 100 - len(MESSAGE), 100)


def test_move_out_honours_offset() -> None:
    uio = Uio.for_read(8, 100)
    assert uio.move_out(MESSAGE) == len(MESSAGE) - 8
    assert uio.tobytes() == MESSAGE[8:]


def test_move_out_short_transfer_stops_at_resid() -> None:
    uio = Uio.for_read(2, 5)
    assert uio.move_out(MESSAGE) == 5
    assert uio.tobytes() == MESSAGE[2:7]
    assert uio.resid == 0
    # Nothing more moves once resid is spent.
    assert uio.move_out(MESSAGE) == 0
    assert uio.tobytes() == MESSAGE[2:7]


@pytest.mark.parametrize("offset", [len(MESSAGE), len(MESSAGE) + 1, 1 << 40])
def test_move_out_at_or_after_end_is_eof(offset: int) -> None:
    uio = Uio.for_read(offset, 100)
    assert uio.move_out(MESSAGE) == 0
    assert uio.tobytes() == b""
    assert uio.resid == 100


def test_successive_move_outs_follow_the_offset() -> None:
    uio = Uio.for_read(0, 10)
    assert uio.move_out(b"abcd") == 4
    # The offset now points past the first buffer: a second buffer is read from 4 on.
    assert uio.move_out(b"0123456789") == 6
    assert uio.tobytes() == b"abcd456789"


def test_uiomove_ignores_offset_for_streams() -> None:
    uio = Uio.for_read(1000, 6)
    assert uio.uiomove(b"abcd") == 4
    assert uio.uiomove(b"efgh") == 2
    assert uio.uiomove(b"ijkl") == 0
    assert uio.tobytes() == b"abcdef"
    assert uio.resid == 0


def test_zero_size_read_moves_nothing() -> None:
    uio = Uio.for_read(0, 0)
    assert uio.move_out(MESSAGE) == 0
    assert uio.uiomove(MESSAGE) == 0
    assert uio.tobytes() == b""


def test_move_in_takes_everything() -> None:
    uio = Uio.for_write(5, b"hi rust\n")
    assert uio.rw is UioRw.WRITE
    assert (uio.offset, uio.resid) == (5, 8)
    assert uio.move_in() == b"hi rust\n"
    assert (uio.offset, uio.resid) == (13, 0)
    assert uio.move_in() == b""


def test_move_in_with_limit() -> None:
    uio = Uio.for_write(0, bytearray(b"0123456789"))
    assert uio.move_in(3) == b"012"
    assert uio.move_in(4) == b"3456"
    assert uio.move_in(100) == b"789"
    assert uio.move_in(1) == b""
    assert (uio.offset, uio.resid) == (10, 0)


def test_move_in_negative_limit_moves_nothing() -> None:
    uio = Uio.for_write(0, b"abc")
    assert uio.move_in(-1) == b""
    assert uio.resid == 3


def test_move_in_returns_a_copy() -> None:
    source = bytearray(b"abcdef")
    uio = Uio.for_write(0, source)
    taken = uio.move_in(3)
    source[:] = b"XXXXXX"
    assert taken == b"abc"
    assert isinstance(taken, bytes)


def test_wrong_direction_raises_type_error() -> None:
    with pytest.raises(TypeError):
        Uio.for_read(0, 10).move_in()
    with pytest.raises(TypeError):
        Uio.for_write(0, b"abc").move_out(b"xyz")
    with pytest.raises(TypeError):
        Uio.for_write(0, b"abc").uiomove(b"xyz")


def test_negative_offset_or_resid_rejected() -> None:
    with pytest.raises(ValueError):
        Uio.for_read(-1, 10)
    with pytest.raises(ValueError):
        Uio.for_read(0, -1)


def test_bytes_move_out_without_copy() -> None:
    source = b"immutable payload"
    uio = Uio.for_read(0, 100)
    uio.move_out(source)
    (chunk,) = uio.chunks
    assert chunk is source  # the driver's own bytes, not a copy
    uio = Uio.for_read(3, 4)
    uio.move_out(source)
    (part,) = uio.chunks
    assert isinstance(part, memoryview) and part.obj is source  # a view, not a copy
    assert bytes(part) == b"utab"


def test_bytearray_source_is_copied_at_move_time() -> None:
    source = bytearray(b"mutable payload")
    uio = Uio.for_read(0, 100)
    uio.move_out(source)
    uio2 = Uio.for_read(0, 100)
    uio2.uiomove(source)
    source[:] = b"X" * len(source)
    del source[4:]  # resizing must stay possible: no view pins it
    assert uio.tobytes() == b"mutable payload"
    assert uio2.tobytes() == b"mutable payload"


def test_memoryview_source_is_copied() -> None:
    backing = bytearray(b"viewed")
    uio = Uio.for_read(0, 100)
    uio.uiomove(memoryview(backing))
    backing[:] = b"XXXXXX"
    assert uio.tobytes() == b"viewed"


def test_write_from_memoryview_of_non_bytes() -> None:
    import array

    data = array.array("H", [1, 2, 3])
    uio = Uio.for_write(0, memoryview(data))
    assert uio.resid == 6
    assert uio.move_in() == data.tobytes()
